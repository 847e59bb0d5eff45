"""pytest-benchmark wrapper of bench/train_throughput.py: Trainer.fit on the RSC15 sample with the official
rsc15 cross-entropy settings (runs with --benchmark-enable; otherwise once, as a smoke test)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import train_throughput as tt  # noqa: E402


@pytest.fixture(scope="module")
def workload():
    import gru4rec_kernels as g
    df, _ = tt.load_frames("rsc15")
    if df is None:
        pytest.skip(f"no rsc15 sample under {tt.data_dir()}")
    full = g.SessionData.from_pandas(df)
    cfg, _ = tt.config("rsc15", 1, None)
    return full, cfg


@pytest.mark.parametrize("backend,steps", [("cpu", 400), ("numpy", 30)])
def test_train_throughput(benchmark, workload, backend, steps):
    full, cfg = workload
    train = tt.first_sessions(full, tt.sessions_for_steps(full, cfg.batch_size, steps))
    warm = tt.first_sessions(full, 50)
    r, _ = benchmark.pedantic(tt.fit_ours, args=(backend, cfg, train, warm), rounds=1, iterations=1)
    benchmark.extra_info.update(mb_per_s=r["mb_per_s"], events_per_s=r["events_per_s"], steps=r["steps"])
    assert r["mb_per_s"] > 0 and r["steps"] >= steps

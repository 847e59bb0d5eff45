"""Golden runs: per-epoch losses and final parameters of short ``Trainer.fit`` runs, fixed before a refactor.

Every loss x input mode, on the numpy and cpu backends, with dropout, momentum, logq and extra samples on, so
that every kernel family takes part. ``tests/test_golden.py`` compares a fresh run with ``tests/golden/runs.json``
bit for bit (the float32 bytes of every parameter, by SHA-256, and the exact epoch losses). A change that moves
the results on purpose regenerates the file in the same commit and says why:

    python tests/golden.py --write
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).with_name("golden") / "runs.json"
LOSSES = ["cross-entropy", "bpr-max", "top1-max", "bpr", "top1"]
MODES = ["constrained", "embedding", "onehot"]
BACKENDS = ["numpy", "cpu"]


def host_cpu() -> str:
    """The CPU the cpu backend compiles for: other vector units may round differently."""
    try:
        import llvmlite.binding as llvm
        return f"{platform.machine()}:{llvm.get_host_cpu_name()}"
    except Exception:
        return platform.machine()


def _data():
    import gru4rec_kernels as g
    from gru4rec_kernels.synthetic import generate_clicks
    df = generate_clicks(n_items=60, n_sessions=120, seed=3)
    return g.SessionData.from_pandas(df)


def _cfg(loss: str, mode: str):
    import gru4rec_kernels as g
    emb = {"constrained": dict(constrained_embedding=True, embedding=0),
           "embedding": dict(constrained_embedding=False, embedding=5),
           "onehot": dict(constrained_embedding=False, embedding=0)}[mode]
    return g.TrainConfig(layers=[6], loss=loss, final_act="elu-0.5" if loss == "bpr-max" else "linear",
                         batch_size=4, n_sample=7, sample_store_size=500, n_epochs=2, learning_rate=0.05,
                         momentum=0.3, dropout_p_embed=0.2 if mode == "embedding" else 0.0,
                         dropout_p_hidden=0.25, logq=0.5 if loss == "cross-entropy" else 0.0,
                         bpreg=0.7, seed=11, **emb)


def run_one(data, loss: str, mode: str, backend: str) -> dict:
    import gru4rec_kernels as g
    model = g.Trainer(_cfg(loss, mode), backend=backend, show_progress=False).fit(data)
    params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(model.params.items())}
    return {"losses": [float(h["loss"]) for h in model.history],
            "params_sha256": {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in params.items()},
            "params_sum": {k: float(np.float64(v).sum()) for k, v in params.items()},
            "params_abs_sum": {k: float(np.abs(np.float64(v)).sum()) for k, v in params.items()}}


def run_all() -> dict:
    data = _data()
    return {f"{backend}/{loss}/{mode}": run_one(data, loss, mode, backend)
            for backend in BACKENDS for loss in LOSSES for mode in MODES}


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/golden.py --write")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"host_cpu": host_cpu(), "runs": run_all()}, indent=1, sort_keys=True) + "\n")
    print("wrote", GOLDEN)

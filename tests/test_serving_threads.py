"""Serving under concurrency: 8 client threads for 20 s under every available Numba threading layer, state equal
to a replay; plus the edges found by probing (expired sessions, unhashable ids, a model changed under a cache)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.layout import init_params

SOAK_SECONDS = float(os.environ.get("GRU4REC_SOAK_SECONDS", "20"))

SOAK = textwrap.dedent("""
    import json, sys, threading, time
    import numba, numpy as np
    import gru4rec_kernels as g
    from gru4rec_kernels.layout import init_params
    from gru4rec_kernels.recommend import recommend_one
    seconds = float(sys.argv[1])
    cfg = g.TrainConfig(layers=[16, 8], n_sample=0)
    N = 3000
    _, params = init_params(cfg, N, seed=1)
    params["By"][:] = np.random.default_rng(0).normal(size=N)
    model = g.Model(cfg, np.arange(N) * 3, params, item_support=np.arange(N, 0, -1.0))
    rec = g.SessionRecommender(model)
    clicks = {}
    errors = []
    # compile first (a cold Numba cache can take the whole soak on a loaded 2-core machine), then soak
    warm = g.SessionRecommender(model)
    warm.click("warm", 3)
    warm.recommend("warm", k=10)
    model.recommend_batch([[3, 6], [9]], k=5)
    recommend_one(model, [3, 6], k=10)
    stop = time.monotonic() + seconds
    def client(c):
        rng = np.random.default_rng(c)
        calls = 0
        try:
            while time.monotonic() < stop:
                sid = f"c{c}-s{rng.integers(5)}"
                item = int(rng.integers(N)) * 3
                rec.click(sid, item)
                clicks.setdefault(sid, []).append(item)
                rec.recommend(sid, k=10)
                if calls % 25 == 0:  # a batch now and then: parallel regions from several threads
                    model.recommend_batch([clicks[sid][-5:], [3, 6, 9]], k=5)
                calls += 1
        except Exception as e:
            errors.append(repr(e))
    ths = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    bad = 0
    for sid, items in clicks.items():
        want = recommend_one(model, items, k=10)
        got = rec.recommend(sid, k=10)
        bad += not (np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]))
    print(json.dumps({"layer": numba.threading_layer(), "sessions": len(clicks),
                      "clicks": sum(map(len, clicks.values())), "mismatches": bad, "errors": errors[:3]}))
""")


def _available_layers():
    layers = ["workqueue"]
    for name, probe in (("omp", "numba.np.ufunc.omppool"), ("tbb", "numba.np.ufunc.tbbpool")):
        try:
            __import__(probe)
            layers.append(name)
        except Exception:
            pass
    return layers


@pytest.mark.skipif(bool(os.environ.get("PYTEST_XDIST_WORKER")),
                    reason="runs serially (.ci/run runs this file on its own): a soak of 8 client threads must not "
                           "share the cores with other test workers")
@pytest.mark.parametrize("layer", _available_layers())
def test_eight_clients_under_every_threading_layer(layer):
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    proc = subprocess.run([sys.executable, "-c", SOAK, str(SOAK_SECONDS)], env=env, capture_output=True, text=True,
                          timeout=SOAK_SECONDS + 240)
    assert proc.returncode == 0, proc.stderr[-2000:]  # under workqueue an unsafe launch aborts the process
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["layer"] == layer
    assert out["errors"] == [] and out["mismatches"] == 0 and out["clicks"] > 100, out


@pytest.fixture()
def model():
    cfg = g.TrainConfig(layers=[6], n_sample=0)
    _, params = init_params(cfg, 50, seed=2)
    return g.Model(cfg, np.arange(50), params, item_support=np.ones(50))


def test_expired_sessions_are_not_returned(model):
    t = [0.0]
    rec = g.SessionRecommender(model, ttl_seconds=10, clock=lambda: t[0])
    rec.click("a", 3)
    assert rec.history("a").tolist() == [3]
    t[0] = 11.0
    assert rec.history("a").size == 0 and rec.hidden_state("a") is None and "a" not in rec


@pytest.mark.parametrize("call", ["history", "hidden_state", "contains", "end", "recommend", "click"])
def test_unhashable_session_ids_are_a_clear_error(model, call):
    rec = g.SessionRecommender(model)
    f = {"history": lambda: rec.history([1]), "hidden_state": lambda: rec.hidden_state([1]),
         "contains": lambda: [1] in rec, "end": lambda: rec.end([1]), "recommend": lambda: rec.recommend([1]),
         "click": lambda: rec.click([1], 3)}[call]
    with pytest.raises(ValueError, match="hashable"):
        f()


def test_a_changed_config_rebuilds_the_cached_engine(model):
    from gru4rec_kernels.recommend import recommend_one
    before = recommend_one(model, [1, 2], k=5)
    rec = g.SessionRecommender(model)
    rec.click("s", 1)
    model.cfg.final_act = "tanh"
    after = recommend_one(model, [1, 2], k=5)
    np.testing.assert_allclose(after[1], np.tanh(before[1]), rtol=1e-5)
    assert "s" not in rec and rec.n_invalidated == 1  # its state belonged to the old model

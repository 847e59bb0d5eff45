"""Kernel launches per training step of the cuda backend: each launch is a node of the captured CUDA graph, and at
the benchmark's small batches a step costs about its number of nodes times a node's latency (docs/kernels.md).

Counted in the CUDA simulator with ``kernels.common.record_launches`` (every launcher fetches its kernel through
``get_kernel`` once per launch). The count depends on the configuration (layers, input mode, loss, dropout,
clipping), not on the sizes, so tiny sizes stand in for the benchmark workloads of bench/gpu_bench.py:
W1 = cross-entropy, constrained embedding, one layer, no dropout; W3 = the same with bpr-max and elu-1.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
from steps import make_cfg, make_schedule

from gru4rec_kernels.backends import cuda_usable
from gru4rec_kernels.kernels import common as kc
from gru4rec_kernels.layout import init_params

pytestmark = pytest.mark.skipif(not cuda_usable()[0], reason="no GPU and no CUDA simulator")

N_ITEMS = 13
# Launches (= CUDA graph nodes) of a W1 step: 29 before the GEMMs were grouped and split, the gathers folded into
# step_begin, the column sums made GEMM products and the sparse update put on host segments (one launch for Wy
# and By); the bound is 18.
MAX_W1 = 18
MAX_W1_WITHOUT_SPARSE = 17


def step_launches(cfg) -> list:
    """Kernel names of one training step (the second: the first one compiles), in launch order."""
    from gru4rec_kernels.backends.cuda import CudaBackend

    _, params = init_params(cfg, N_ITEMS, seed=1)
    be = CudaBackend(cfg, N_ITEMS, params, graph_steps=0)
    sched = make_schedule(2, cfg.batch_size, cfg.n_sample, N_ITEMS, seed=2)
    be.train_chunk(*[a[:1] for a in sched], 0)
    with kc.record_launches() as names:
        be.train_chunk(*[a[1:] for a in sched], 1)
    return list(names)


def report(tag, names):
    counts = collections.Counter(names)
    print(f"\n{tag}: {len(names)} launches per step: {' '.join(names)}")
    for name, n in counts.items():
        print(f"  {n} x {name}")


def without_sparse(names):
    return [n for n in names if not n.startswith("sparse_adagrad")]


W1 = dict(loss="cross-entropy", mode="constrained", layers=(4,), final_act="linear", batch_size=3, n_sample=5)
W3 = dict(W1, loss="bpr-max", final_act="elu-1", bpreg=0.9)


@pytest.mark.parametrize("name,kw", [("W1", W1), ("W3", W3)])
def test_step_launch_count(name, kw):
    names = step_launches(make_cfg(**kw))
    report(name, names)
    assert len(names) <= MAX_W1, f"{name}: {len(names)} launches: {names}"
    assert names.count("sparse_adagrad") == 1  # Wy with By, constrained: one launch
    dense = without_sparse(names)
    assert len(dense) <= MAX_W1_WITHOUT_SPARSE, f"{name}: {len(dense)} launches besides sparse Adagrad: {dense}"
    assert names[0] == "step_begin" and names[-1] == "step_end"
    # what was folded away stays away: gathers and the reset live in step_begin, column sums in the GEMMs, and
    # no dropout kernel runs without dropout
    for gone in ("gather_rows", "hidden_reset", "col_sum", "dropout_inplace"):
        assert gone not in names, f"{name}: {gone} launched"
    assert names.count("gemm_grouped") == 3  # forward xw + hU; backward top; the layer's weight gradients


def test_launches_follow_the_configuration():
    """Embedding dropout brings back exactly its one kernel; a second layer adds its own eight launches (four GRU
    kernels, the forward and weight-gradient GEMM groups, the rhU and drh GEMMs) and nothing else."""
    base = without_sparse(step_launches(make_cfg(**W1)))
    drop = without_sparse(step_launches(make_cfg(**dict(W1, dropout_p_embed=0.3))))
    assert collections.Counter(drop) - collections.Counter(base) == collections.Counter(["dropout_inplace"])
    two = without_sparse(step_launches(make_cfg(**dict(W1, layers=(4, 5)))))
    extra = collections.Counter(two) - collections.Counter(base)
    assert extra == collections.Counter({"gemm_grouped": 2, "gemm_nn": 1, "gemm_nt": 1, "gru_fwd_rz": 1,
                                         "gru_fwd_out": 1, "gru_bwd_cz": 1, "gru_bwd_r": 1}), extra
    assert two.count("row_loss_partial") == 1 and two.count("step_begin") == 1


def test_record_launches_counts_every_launch():
    """The counter itself: one entry per launch, in order; a nested block collects its own launches."""
    from gru4rec_kernels.kernels import gemm as kgm

    a = np.ones((3, 2), np.float32)
    with kc.record_launches() as outer:
        kgm.launch_gemm(np.zeros((3, 3), np.float32), a, a, tb=True)
        with kc.record_launches() as inner:
            kgm.launch_gemm(np.zeros((2, 2), np.float32), a, a, ta=True)
    assert outer == ["gemm_nt"] and inner == ["gemm_tn"]

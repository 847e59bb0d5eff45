"""Where a cpu-backend training step spends its time: each ``backends/cpu`` kernel of the step timed alone, in a
loop, on the backend's own buffers after a real chunk of steps, next to the whole step and the GEMM peak.

    python bench/cpu_step_phases.py [--workload rsc15|diginetica] [--reps 50] [--out PATH]

Workloads (random ids with a Zipf-like popularity, samples from SampleStore as training draws them):
rsc15 = B 32, H 100, n_sample 2048, cross-entropy, logq 1, dropout 0.4 (the rsc15 paramfile, 2,933 items);
diginetica = B 128, H 512, n_sample 2048, bpr-max, elu-1, bpreg 0.9, dropout 0.5 / 0.3 (43,097 items).
A phase's time is the mean over ``--reps`` back-to-back calls (after one untimed call), minus nothing: the
Python dispatch of a call (a few microseconds) is included, so the phase sum slightly overstates the step.
GEMM phases also report GFLOP/s, beside numpy's BLAS at the same shapes (the machine's measured peak).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

WORKLOADS = {
    "rsc15": dict(n_items=2933, cfg=dict(layers=[100], loss="cross-entropy", batch_size=32, n_sample=2048,
                                         dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2, logq=1.0,
                                         sample_alpha=0.5)),
    "diginetica": dict(n_items=43097, cfg=dict(layers=[512], loss="bpr-max", final_act="elu-1", batch_size=128,
                                               n_sample=2048, dropout_p_embed=0.5, dropout_p_hidden=0.3,
                                               learning_rate=0.05, momentum=0.15, bpreg=0.9, sample_alpha=0.3)),
}


CLOCK = time.perf_counter


def timed(fn, reps):
    fn()
    t0 = CLOCK()
    for _ in range(reps):
        fn()
    return (CLOCK() - t0) / reps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="diginetica")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--steps", type=int, default=40, help="steps of the whole-step timing")
    ap.add_argument("--ids", choices=("zipf", "uniform"), default="zipf",
                    help="item popularity of inputs, targets and samples: 1/rank (real logs: many duplicate ids in "
                         "a step's sparse update) or uniform (almost none)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="process CPU time instead of wall time: with NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                         "this is the single-core cost, unaffected by other jobs taking the core (a loaded machine)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    from train_throughput import machine_info

    import gru4rec_kernels as g
    from gru4rec_kernels.backends.cpu import CpuBackend, adagrad, gru, scores_loss
    from gru4rec_kernels.layout import init_params
    from gru4rec_kernels.sampling import SampleStore
    from gru4rec_kernels.trainer import logq_columns

    w = WORKLOADS[args.workload]
    N = w["n_items"]
    cfg = g.TrainConfig(**w["cfg"])
    B, S, H = cfg.batch_size, cfg.n_sample, cfg.layers[-1]
    O = B + S
    rng = np.random.default_rng(0)
    pop = 1.0 / np.arange(1, N + 1) if args.ids == "zipf" else np.ones(N)
    pop = pop[rng.permutation(N)]
    support = np.floor(pop / pop.sum() * 1e6) + 1
    lq = logq_columns(cfg, support) if cfg.logq > 0 else (None, None)
    _, params = init_params(cfg, N)
    be = CpuBackend(cfg, N, params, *lq)
    store = SampleStore(support, cfg.sample_alpha, cfg.sample_store_size, S, cfg.seed)
    T = args.steps

    def chunk(T, seed):
        r = np.random.default_rng(seed)
        pick = lambda: r.choice(N, size=(T, B), p=support / support.sum()).astype(np.int32)  # noqa: E731
        return pick(), pick(), np.ones((T, B), bool), r.random((T, B)) < 0.2, store.next_many(T)

    be.train_chunk(*chunk(4, 1), 0)  # compile, buffers
    c = chunk(T, 2)
    t0 = CLOCK()
    be.train_chunk(*c, 100)
    step_s = (CLOCK() - t0) / T
    t0 = CLOCK()
    store.next_many(T)
    sample_s = (CLOCK() - t0) / T
    # the buffers now hold the last step's state: time each phase on them
    p, hyp, buf = be._p, be._hyper, be._train
    wk, gr, opt = buf["work"], buf["grads"], be._opt
    hid = tuple(be._split_hidden(be._hid, B))
    X = c[0][-1]
    Y = wk.ids[:O]
    jobs = np.zeros((4, 11), np.int64)
    top, dtop = wk.layers[-1].out, wk.layers[-1].dout
    n_wy = O + B
    lr, mu = cfg.learning_rate, cfg.momentum
    act = np.ones(B, bool)
    phases = {
        "gru_fwd": lambda: gru.gru_fwd(p, hyp, wk, hid, X, B, 7, True, jobs),
        "scores": lambda: scores_loss.scores(p.Wy, p.By, Y, B, hyp.use_logq, hyp.logq_t, hyp.logq_s, wk.hT, wk.WyY,
                                             wk.byY, wk.lqY, wk.Z),
        "row_loss": lambda: scores_loss.row_loss(wk.Z, wk.R, wk.dZ, O, Y, wk.byY, wk.lqY, hyp.use_logq, act, act,
                                                 0, hyp.loss, hyp.act, hyp.act_a, hyp.bpreg, hyp.mask_hits, 1.0 / B,
                                                 wk.rowloss),
        "score_grads": lambda: scores_loss.score_grads(wk.dZ, wk.WyY, top, gr.Wy, gr.By, wk.dh_part, dtop, O),
        "gru_bwd": lambda: gru.gru_bwd(p, gr, hyp, wk, hid, B, True, jobs),
        "adagrad_dense": lambda: adagrad.adagrad_dense(p.flat, gr.flat, opt.acc_flat, opt.mom_flat, lr, mu),
        "link_ids": lambda: adagrad.link_ids(wk.ids, n_wy, wk.head, wk.nxt, wk.first),
        "sparse_adagrad": lambda: adagrad.sparse_adagrad(p.Wy, opt.acc_Wy, opt.mom_Wy, gr.Wy, wk.ids, wk.first,
                                                         wk.nxt, nu, lr, mu, p.By, opt.acc_By,
                                                         opt.mom_By, gr.By, O),
    }
    nu = adagrad.link_ids(wk.ids, n_wy, wk.head, wk.nxt, wk.first)
    res = {}
    for name, fn in phases.items():
        res[name] = timed(fn, args.reps)
    res["sampling (SampleStore.next_many, per step)"] = sample_s
    in0 = H
    flops = {"scores": 2 * B * O * H, "score_grads": 4 * B * O * H,
             "gru_fwd": 2 * B * (in0 * 3 * H + H * 2 * H + H * H),
             "gru_bwd": 2 * B * (in0 * 3 * H + H * 2 * H + H * H) + 2 * B * (in0 * 3 * H + H * H)}
    # numpy's BLAS at the same shapes (the machine's measured GEMM peak for these products)
    f32 = np.float32
    A, Wt, hb = rng.random((B, H), dtype=f32), rng.random((H, O), dtype=f32), rng.random((O, H), dtype=f32)
    Zm, dZ = np.empty((B, O), f32), rng.random((B, O), dtype=f32)
    gW, dh = np.empty((O, H), f32), np.empty((B, H), f32)
    blas = {"scores": timed(lambda: np.matmul(A, Wt, out=Zm), args.reps),
            "score_grads": timed(lambda: (np.matmul(dZ.T, A, out=gW), np.matmul(dZ, hb, out=dh)), args.reps)}
    Wx, Wrz, Wh = (rng.random(s, dtype=f32) for s in ((in0, 3 * H), (H, 2 * H), (H, H)))
    a3, a2, a1 = np.empty((B, 3 * H), f32), np.empty((B, 2 * H), f32), np.empty((B, H), f32)
    blas["gru_fwd"] = timed(lambda: (np.matmul(A, Wx, out=a3), np.matmul(A, Wrz, out=a2), np.matmul(A, Wh, out=a1)),
                            args.reps)
    gx, gz, gh = np.empty((in0, 3 * H), f32), np.empty((H, 2 * H), f32), np.empty((H, H), f32)
    blas["gru_bwd"] = timed(lambda: (np.matmul(A.T, a3, out=gx), np.matmul(A.T, a2, out=gz),
                                     np.matmul(A.T, a1, out=gh), np.matmul(a1, Wh.T, out=dh),
                                     np.matmul(a3, Wx.T, out=dh)), args.reps)
    total = sum(v for k, v in res.items())
    out = {"workload": args.workload, "ids": args.ids, "clock": "process CPU time" if args.cpu_time else "wall",
           "config": cfg.to_dict(), "n_items": N, "whole_step_ms": step_s * 1e3,
           "phase_ms": {k: v * 1e3 for k, v in res.items()}, "phase_sum_ms": total * 1e3,
           "gemm_gflops": {k: flops[k] / res[k] / 1e9 for k in flops},
           "numpy_blas_ms": {k: v * 1e3 for k, v in blas.items()},
           "numpy_blas_gflops": {k: flops[k] / blas[k] / 1e9 for k in flops},
           "step_gemm_gflop": sum(flops.values()) / 1e9, "machine": machine_info()}
    out["machine"]["loadavg_at_end"] = os.getloadavg()
    ids = np.concatenate([c[1], c[4]], axis=1)
    out["distinct_output_ids_share"] = float(np.mean([np.unique(r).size / r.size for r in ids]))
    print(f"{args.workload} ({args.ids} ids, {out['distinct_output_ids_share']:.0%} distinct): "
          f"whole step {step_s * 1e3:.2f} ms, phases sum {total * 1e3:.2f} ms, "
          f"GEMMs {sum(flops.values()) / 1e9:.3f} GFLOP/step, load {os.getloadavg()[0]:.2f}")
    for k, v in res.items():
        extra = (f"  {flops[k] / v / 1e9:6.1f} GFLOP/s (numpy BLAS {flops[k] / blas[k] / 1e9:6.1f})"
                 if k in flops else "")
        print(f"  {k:42s} {v * 1e3:8.3f} ms{extra}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return out


if __name__ == "__main__":
    main()

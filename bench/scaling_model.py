"""MODEL, not a measurement: the step time of synchronous data parallelism (dataparallel.py) on P GPUs against
one GPU at the same global batch, for the W1 and W3 workloads of bench/roofline.py.

Per global step every rank runs its B_l = B_g / P rows against all O = B_g + S output columns, then one sum
all-reduce of the GradLayout buffer ([dense | Wy slots O x H | By slots O | input rows B_g x in | loss], float32),
then the update from the reduced buffer (every rank the same). So

    t_P = t_rank(B_l) + t_buffer + t_allreduce(P, link)           speed-up = t_1(B_g) / t_P

- t_rank(B_l): bench/roofline.py's per-kernel roofline of the cuda step as built, traced at B = B_l rows and
  S' = S + B_g - B_l extra samples, i.e. B_l rows against O = B_g + S columns, the rank's shapes (its sparse
  update walks O + B_l slots where the data-parallel one walks O + B_g: a few dozen rows of ~2,200, neglected).
  t_1(B_g) is the same trace at the workload's own B. How it scales with B_l is in the roofline's kernel table
  (bench/results/roofline.json): W1's 16 launches are all latency-bound, grids below one wave, so its step is
  node overheads and block latencies that do not shrink with fewer rows (137.6 us at B = 32, ~133 us at B = 4);
  W3's backward GEMM groups (~190 us each at B = 128) shrink with the rows, the update and the fixed costs do not.
- t_buffer = 2 x buffer bytes / HBM bandwidth: the gradients written into the buffer and read back, a pass the
  one-GPU step does not make.
- t_allreduce = base + 2 (P - 1) / P x bytes / bw + 2 (P - 1) x hop latency: the ring all-reduce (reduce-scatter
  then all-gather, 2 (P - 1) steps, each moving bytes / P over every link). The buffer does not shrink with P:
  its Wy slots are O = B_g + S rows whatever the split.
- No overlap of the all-reduce with compute is modelled (the update needs the reduced buffer; the dense part
  could overlap the sparse backward, not built): pessimistic by at most the all-reduce time.

Assumed links (bus bandwidth; per-hop latency of NCCL's ring with the Simple protocol, from NCCL's own tuning
model, NVIDIA/nccl src/graph/tuning.cc: ``hwLat`` Ring/Simple NVLink 3.4 us, PCI 5.7 us, NET 9.6 us, and
``baseLat`` Ring/Simple 8.4 us per call):

    NVLink 4 (H100 SXM)      450 GB/s    3.4 us   bandwidth: NVLink 4 is 900 GB/s bidirectional, 450 per direction
    PCIe Gen5 x16             50 GB/s    5.7 us   64 GB/s per direction raw, ~50 effective
    InfiniBand NDR 400 Gb/s   45 GB/s    9.6 us   50 GB/s raw, ~45 effective
    100 GbE (TCP)             11 GB/s   50 us     12.5 GB/s raw; kernel TCP: ~50 us host to host (WWT, "The
                                                  basics of high-performance networking": kernel-to-kernel
                                                  latency around 50 microseconds), NCCL's NET figure is for RDMA

Run:  python bench/scaling_model.py [--out bench/results/scaling_model.json]   (traces in the CUDA simulator)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "scaling_model.json"
LABEL = ("MODEL (ring all-reduce of the data-parallel gradient buffer against bench/roofline.py's modelled step; "
         "not a measurement)")
RANKS = (2, 4, 8)
WORKLOADS = ("W1", "W3")
NCCL_BASE_S = 8.4e-6  # NCCL baseLat, Ring / Simple


@dataclass(frozen=True)
class Link:
    name: str
    bw: float  # bytes/s each way, what the ring moves per link
    hop_s: float  # latency of one ring step
    source: str


LINKS = (
    Link("NVLink4", 450e9, 3.4e-6, "H100 NVLink 4: 900 GB/s bidirectional; hop: NCCL hwLat NVLink Ring/Simple"),
    Link("PCIe5x16", 50e9, 5.7e-6, "PCIe Gen5 x16: 64 GB/s raw per direction, ~50 effective; hop: NCCL hwLat PCI"),
    Link("IB-NDR400", 45e9, 9.6e-6, "InfiniBand NDR 400 Gb/s: 50 GB/s raw, ~45 effective; hop: NCCL hwLat NET"),
    Link("100GbE", 11e9, 50e-6, "100 GbE: 12.5 GB/s raw, ~11 effective; hop: kernel TCP host to host ~50 us "
                                "(WWT, The basics of high-performance networking)"),
)


def _roofline():
    spec = importlib.util.spec_from_file_location("roofline_for_scaling", REPO / "bench" / "roofline.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


rl = _roofline()


def grad_buffer_bytes(w) -> int:
    """The all-reduce buffer of workload ``w``: dataparallel.GradLayout's size in float32."""
    from gru4rec_kernels.dataparallel import GradLayout
    return 4 * GradLayout.build(w.config(), w.N).size


def ring_allreduce_s(nbytes: float, P: int, link: Link) -> float:
    if P == 1:
        return 0.0
    return NCCL_BASE_S + 2 * (P - 1) / P * nbytes / link.bw + 2 * (P - 1) * link.hop_s


def rank_workload(w, P: int):
    """What one of P ranks computes: B_l = B / P rows against the B + S columns of the global step."""
    if w.B % P:
        raise ValueError(f"{w.name}: B = {w.B} is not divisible by P = {P}")
    Bl = w.B // P
    return dataclasses.replace(w, B=Bl, S=w.S + w.B - Bl)


def model(dev=None, ids: str = "zipf", workloads=WORKLOADS, ranks=RANKS, links=LINKS) -> dict:
    dev = dev or rl.Device()
    out = {"label": LABEL, "device": dataclasses.asdict(dev), "ids": ids, "nccl_base_s": NCCL_BASE_S,
           "links": [dataclasses.asdict(k) for k in links], "workloads": {}, "rows": []}
    for w in (x for x in rl.WORKLOADS if x.name in workloads):
        nbytes = grad_buffer_bytes(w)
        t1 = rl.model_step(w, dev, ids)["step_s"]
        t_buffer = 2 * nbytes / dev.hbm_bw
        rank = {}
        for P in ranks:
            m = rl.model_step(rank_workload(w, P), dev, ids)
            rank[P] = {"B_l": w.B // P, "step_s": m["step_s"],
                       "kernels_us": {f"{i}:{k['name']}": round(k["time_s"] * 1e6, 2) for i, k in
                                      enumerate(m["kernels"])}}
        out["workloads"][w.name] = {"workload": dataclasses.asdict(w), "buffer_bytes": nbytes, "step_1gpu_s": t1,
                                    "buffer_pass_s": t_buffer, "rank_step": {str(P): v for P, v in rank.items()}}
        for P in ranks:
            for link in links:
                t_ar = ring_allreduce_s(nbytes, P, link)
                t = rank[P]["step_s"] + t_buffer + t_ar
                out["rows"].append({"workload": w.name, "P": P, "B_l": w.B // P, "link": link.name,
                                    "buffer_MB": nbytes / 1e6, "rank_step_us": rank[P]["step_s"] * 1e6,
                                    "buffer_pass_us": t_buffer * 1e6, "allreduce_us": t_ar * 1e6,
                                    "step_us": t * 1e6, "step_1gpu_us": t1 * 1e6, "speedup": t1 / t,
                                    "efficiency": t1 / t / P})
    return out


def report(res: dict) -> str:
    lines = [f"=== {res['label']} ==="]
    for name, w in res["workloads"].items():
        ww = w["workload"]
        lines.append(f"--- {name}: B_g={ww['B']} H={ww['H']} S={ww['S']} N={ww['N']}: buffer "
                     f"{w['buffer_bytes'] / 1e6:.2f} MB, 1 GPU {w['step_1gpu_s'] * 1e6:.1f} us/step; rank step at "
                     + ", ".join(f"B_l={v['B_l']}: {v['step_s'] * 1e6:.1f} us" for v in w["rank_step"].values()))
    lines.append(f"{'work':<5}{'P':>3}{'B_l':>5}  {'link':<10}{'rank us':>9}{'buffer':>8}{'allreduce':>11}"
                 f"{'step us':>9}{'1 GPU':>8}{'speed-up':>10}{'eff':>6}")
    for r in res["rows"]:
        lines.append(f"{r['workload']:<5}{r['P']:>3}{r['B_l']:>5}  {r['link']:<10}{r['rank_step_us']:>9.1f}"
                     f"{r['buffer_pass_us']:>8.1f}{r['allreduce_us']:>11.1f}{r['step_us']:>9.1f}"
                     f"{r['step_1gpu_us']:>8.1f}{r['speedup']:>9.2f}x{r['efficiency']:>6.2f}")
    lines.append(f"=== {res['label']} ===")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="MODEL of data-parallel scaling (ring all-reduce vs the roofline step)")
    ap.add_argument("--ids", choices=("zipf", "uniform"), default="zipf")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    rl._ensure_simulator()
    sys.path.insert(0, str(REPO))
    res = model(ids=args.ids)
    print(report(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

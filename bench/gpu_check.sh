#!/usr/bin/env bash
# The one-script GPU check: run it on a machine with a CUDA GPU (cupy + numba-cuda installed), e.g.
#   OUT=/tmp/out bash bench/gpu_check.sh
# It runs, each under its own time limit (8 minutes in all at most):
#   1. the CUDA tests on the real device: `pytest -m gpu` plus the kernel, backend and fit tests that run in the
#      simulator on CI (here they run on the GPU, against the same numpy references);
#   2. bench/kernel_bench.py: every launch of the W1-W3 step checked (whole step against numpy, each GEMM launch
#      on its own operands), then timed with CUDA events beside the roofline MODEL's per-launch prediction;
#   3. bench/gpu_bench.py: whole training steps W1-W3 on Zipf ids (correctness check, then CUDA-event timings of
#      replayed graphs) beside the eager PyTorch peer, and all-item evaluation (100k events x 700k items);
#   4. bench/roofline.py (the MODEL, traced in the CUDA simulator in its own process) for the same tree;
# and writes $OUT/gpu_check_<device>.json (device name, versions, test counts, the benchmark JSONs).
# Without a usable GPU it prints "no GPU: skipped" and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! "$PY" -c "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)" 2>/dev/null; then
    echo "no GPU: skipped (cupy missing or no CUDA device)"; exit 0
fi
unset NUMBA_ENABLE_CUDASIM
export PYTHONUNBUFFERED=1
# Run from a copy of this tree on PYTHONPATH, so nothing in the interpreter's site-packages changes and no
# network is needed.
WORK=$(mktemp -d)
cp -r . "$WORK/tree"
# Some numba-cuda releases register np.row_stack, which NumPy 2.4+ removed: alias it so numba.cuda imports.
mkdir -p "$WORK/site" && printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' > "$WORK/site/sitecustomize.py"
export PYTHONPATH="$WORK/tree:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
REPO=$(pwd); OUT=$(cd "$OUT" && pwd); cd "$WORK/tree"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/nvidia_smi.txt"

T_TESTS=${T_TESTS:-200}; T_KBENCH=${T_KBENCH:-100}; T_BENCH=${T_BENCH:-150}  # + 30 s model: 8 min at most
timeout "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" \
    tests/test_kernels_sim.py tests/test_kernels_gemm.py tests/test_kernels_sparse.py tests/test_cuda_backend.py \
    tests/test_cuda_eval.py tests/test_cuda_fit.py tests/test_step_launches.py -m "gpu or not slow" 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -25
echo "pytest rc=${PIPESTATUS[0]}"
timeout "$T_KBENCH" "$PY" bench/kernel_bench.py --out "$OUT/kernel_bench.json" 2>&1 | tee "$OUT/kernel_bench.log" | tail -60
echo "kernel_bench rc=${PIPESTATUS[0]}"
timeout "$T_BENCH" "$PY" bench/gpu_bench.py --steps ${STEPS:-512} --repeats ${REPEATS:-3} --out "$OUT/gpu_bench.json" 2>&1 \
    | tee "$OUT/gpu_bench.log" | tail -40
echo "gpu_bench rc=${PIPESTATUS[0]}"
NUMBA_ENABLE_CUDASIM=1 timeout 30 "$PY" bench/roofline.py --out "$OUT/roofline.json" 2>&1 | grep -E "^(---|===)" | head -20
"$PY" - "$OUT" "$REPO" <<'PYEOF'
import json, re, subprocess, sys, datetime, xml.etree.ElementTree as ET
from pathlib import Path
out = Path(sys.argv[1])
name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
res = {"label": "MEASURED", "device": name, "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
       "commit": subprocess.run(["git", "-C", sys.argv[2], "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
try:
    ts = ET.parse(out / "gpu_tests.xml").getroot()
    ts = ts if ts.tag == "testsuite" else ts[0]
    res["tests"] = {k: int(ts.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    res["tests"]["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in ts.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None]
except Exception as e:
    res["tests"] = {"error": repr(e)}
for f in ("kernel_bench.json", "gpu_bench.json", "roofline.json"):
    p = out / f
    res[f[:-5]] = json.loads(p.read_text()) if p.exists() else None
slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "gpu"
(out / f"gpu_check_{slug}.json").write_text(json.dumps(res, indent=1) + "\n")
print("wrote", out / f"gpu_check_{slug}.json", "tests:", res["tests"])
PYEOF

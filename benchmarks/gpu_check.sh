#!/usr/bin/env bash
# One command for a GPU machine: build conure with its CUDA kernels, run the whole test suite (CUDA tests on), then
# the GPU benchmark. Needs torch with CUDA and nvcc already installed; no network (pip installs with no deps and no
# build isolation). Everything is logged to $OUT (else ./gpu_out): gpu_check.log, build.log, bench.md, bench.json.
# Self-limits to about 7.5 minutes: each stage's timeout is cut to what is left of CONURE_CHECK_SECONDS (450).
#
#     bash benchmarks/gpu_check.sh            # from anywhere; works on the checkout it sits in
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT_DIR="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1

START=$(date +%s)
TOTAL="${CONURE_CHECK_SECONDS:-450}"
left() { echo $(( TOTAL - ($(date +%s) - START) )); }
cap() {  # cap SECONDS: the smaller of SECONDS and the time left (at least 30)
  local l; l=$(left); (( l < $1 )) && { (( l < 30 )) && echo 30 || echo "$l"; } || echo "$1"
}
stage() { echo; echo "=== $* ($(( $(date +%s) - START )) s in) ==="; }
STATUS=0

PY="${PYTHON:-python}"
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda-13.0 /usr/local/cuda; do
    if [ -x "$c/bin/nvcc" ]; then CUDA_HOME="$c"; break; fi
  done
fi
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export CONURE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
# cuBLAS/cuSPARSE headers that ATen's CUDA headers include may live only in torch's pip wheels (nvidia/*/include).
NV_INC=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
dirs = []
for r in roots:
    for d in glob.glob(os.path.join(r, "nvidia", "*", "include")):
        if d not in dirs:
            dirs.append(d)
print(":".join(dirs))
EOF
)
if [ -n "$NV_INC" ]; then export CPATH="${CPATH:+$CPATH:}$NV_INC"; fi

stage "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -5
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
"$PY" -c "
import importlib.util as u
print('test extras:', {m: u.find_spec(m) is not None for m in ('pytest', 'hypothesis', 'pytest_benchmark', 'expecttest')})"
nvcc --version | tail -2
echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CPATH=${CPATH:-}"

stage "build (pip install --no-build-isolation --no-deps .; full log in build.log)"
rm -f conure/_C*.so conure/_build_info.json
timeout "$(cap 300)" "$PY" -m pip install --no-build-isolation --no-deps --no-input -v . >"$OUT_DIR/build.log" 2>&1
echo "pip exit status $?"
grep -E "warning|error|\[[0-9]+/[0-9]+\]|Successfully" "$OUT_DIR/build.log" | grep -vi setuptools | cut -c1-300 | tail -40
# `python -m pytest` from the checkout imports ./conure, not the installed copy: put the built files beside it.
SITE_PKG=$(cd /tmp && "$PY" -c "import conure, os; print(os.path.dirname(conure.__file__))" 2>/dev/null || true)
if [ -n "$SITE_PKG" ] && ls "$SITE_PKG"/_C*.so >/dev/null 2>&1 && [ "$SITE_PKG" != "$ROOT/conure" ]; then
  cp "$SITE_PKG"/_C*.so "$SITE_PKG"/_build_info.json conure/
  echo "installed to $SITE_PKG; copied the extension into ./conure for the tests"
else
  stage "pip install did not produce conure._C: building in place (setup.py build_ext --inplace)"
  timeout "$(cap 300)" "$PY" setup.py build_ext --inplace 2>&1 | grep -vE "^ *(-I|-D)" | tail -40
fi
if ! CONURE_REQUIRE_EXTENSION=1 "$PY" -c "
import torch, conure
assert conure.ops.cuda_available(), 'extension built without CUDA kernels'
print('conure', conure.__file__, '| backend', conure.backend(), '| CUDA kernels', conure.ops.cuda_available())
print(torch._C._dispatch_dump('conure::masked_causal_conv1d').splitlines()[-3:])
"; then
  echo "BUILD FAILED: no compiled extension with CUDA kernels"; exit 1
fi

stage "CUDA op tests (tests/ops/test_ops_cuda.py)"
export CONURE_REQUIRE_EXTENSION=1
timeout "$(cap 180)" "$PY" -m pytest tests/ops/test_ops_cuda.py -q -rs -p no:cacheprovider --durations=5 || STATUS=1

stage "whole suite (python -m pytest tests -q -x; test_ops_cuda.py ran above)"
# a test module whose optional import (hypothesis, pytest-benchmark) is missing here errors at collection; the rest
# still runs
timeout "$(cap 240)" "$PY" -m pytest tests -q -x -rs -p no:cacheprovider --durations=5 \
    --continue-on-collection-errors --ignore=tests/ops/test_ops_cuda.py || STATUS=1

stage "GPU benchmark"
BUDGET=$(( $(left) - 20 ))
(( BUDGET < 60 )) && BUDGET=60
timeout "$(( BUDGET + 30 ))" "$PY" benchmarks/bench_gpu.py --budget "$BUDGET" --out "$OUT_DIR/bench.md" \
    --json "$OUT_DIR/bench.json" || STATUS=1

stage "done: status $STATUS"
exit $STATUS

#!/usr/bin/env bash
# One command for a GPU machine that has CuPy preinstalled and no network:
# installs this checkout without touching dependencies, runs every test marked
# `gpu` (tests/test_gpu.py and the rest) and a short GPU benchmark.
# Budget: well under 5 minutes (each step has its own timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export MPLBACKEND=Agg

echo "== install (no deps, no build isolation: works offline)"
$PYTHON -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . || exit 1

echo "== device"
$PYTHON - <<'PY' || exit 1
import tinygraph as tg
if not tg.cuda_available():
    from tinygraph import backend
    raise SystemExit(f"no usable CUDA device: CuPy import error {backend._cupy_import_error!r}; "
                     "this script needs CuPy (pip install 'tinygraph[gpu]') and an NVIDIA GPU")
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"CuPy {cupy.__version__}, device 0: {props['name'].decode()}")
PY

echo "== GPU tests (pytest -m gpu)"
# a test file whose optional dependency is missing offline must not hide the GPU tests
timeout 240 $PYTHON -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors -rs tests
tests_status=$?

echo "== GPU benchmark (ratios vs raw CuPy, same run)"
timeout 60 $PYTHON benchmarks/op_overhead.py --device cuda --quick
bench_status=$?

echo "== done: tests exit $tests_status, benchmark exit $bench_status"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]

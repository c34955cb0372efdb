#!/usr/bin/env bash
# One command for a GPU machine that has CuPy preinstalled and no network:
# installs this checkout without touching dependencies, runs every test marked
# `gpu` (tests/test_gpu.py and the rest), the GPU part of the benchmark suite
# (python -m benchmarks --gpu-only) and the per-op GPU overhead benchmark.
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
name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
name = name.decode() if isinstance(name, bytes) else name
print(f"CuPy {cupy.__version__}, device 0: {name}")
PY

echo "== GPU tests (pytest -m gpu)"
# only the files that have gpu-marked tests: a file whose optional test
# dependency is missing on an offline machine cannot break the run
gpu_files=$(grep -lE "mark\.gpu|DEVICES" tests/test_*.py)
if ! $PYTHON -c "import graphviz" 2>/dev/null; then
    # files that import tinygraph.viz at the top need the graphviz package; the
    # others only skip their own diagram tests (pytest.importorskip)
    gpu_files=$(grep -LE "^(from|import) tinygraph\.viz" $gpu_files)
    echo "no graphviz Python package here: leaving out the files that import tinygraph.viz"
fi
echo "files: $(echo $gpu_files)"
timeout 240 $PYTHON -m pytest -m gpu -q -p no:cacheprovider -rs $gpu_files
tests_status=$?

echo "== GPU training-step benchmark: workloads B and E, tinygraph CuPy vs torch CUDA and vs tinygraph CPU"
timeout 150 $PYTHON -m benchmarks --gpu-only
suite_status=$?

echo "== GPU per-op overhead (ratios vs raw CuPy, same run)"
timeout 60 $PYTHON benchmarks/op_overhead.py --device cuda --quick
bench_status=$?

echo "== done: tests exit $tests_status, suite exit $suite_status, op benchmark exit $bench_status"
[ "$tests_status" -eq 0 ] && [ "$suite_status" -eq 0 ] && [ "$bench_status" -eq 0 ]

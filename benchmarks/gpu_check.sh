#!/usr/bin/env bash
# The GPU checks, ready for the moment a GPU machine is at hand (about 5-8 minutes on one H100/H200):
#   1. the conformance suite on torch CUDA and on CuPy (what `nox -t gpu` runs, without nox's installs),
#   2. the GPU benchmark cases (torch CUDA float32 and bfloat16 N=16384, C=131072 against a `sum`
#      floor, F.cross_entropy, compiled F.cross_entropy, Liger-Kernel if installed; ctc_loss against
#      F.ctc_loss on CUDA tensors, B16 T200 C32 S40; CuPy forward),
#   3. the table of (2) in $OUT/gpu-bench.txt (and JSON), for benchmarks/RESULTS.md.
#
# Run from the repository root, on a machine with an NVIDIA GPU whose Python has torch, cupy, pytest,
# hypothesis and numpy (the workplace's GPU image has them). What it lacks travels as wheels in .whl/
# (pure-Python ones, made here with pip download):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl array-api-compat==1.16.0 array-api-strict==2.6.1
#
# then, with the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=590).
# Results go to $OUT (the device tool's folder that comes back), else to ./gpu-check (git ignores it).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi failed)" >&2
    exit 1
fi
out=${OUT:-gpu-check}
mkdir -p "$out"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
head -n 12 "$out/nvidia-smi.txt"

site=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
fi
export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import arrayloss, array_api_compat, torch; print('arrayloss from', arrayloss.__file__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"

status=0
run() {  # run NAME COMMAND...: its output in $out/NAME.log, its last lines here; remember a failure
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 4 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

run conformance-torch-cuda "$python" -m pytest -q -p no:cacheprovider conformance --backend=torch --device=cuda
run conformance-cupy "$python" -m pytest -q -p no:cacheprovider conformance --backend=cupy
run gpu-bench "$python" benchmarks/bench.py --cases gpu --repeat 5 --json "$out/gpu-bench.json"
cp "$out/gpu-bench.log" "$out/gpu-bench.txt"
cat "$out/gpu-bench.txt"
exit "$status"

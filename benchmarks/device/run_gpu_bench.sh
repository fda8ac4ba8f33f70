#!/usr/bin/env bash
# Run ON the GPU machine, in the repository root, with .whl/ carried (see fetch_wheels.sh):
#   bash benchmarks/device/run_gpu_bench.sh off    # eager SD3.5-medium arch + FLUX.1-dev smoke (~3–5 min)
#   bash benchmarks/device/run_gpu_bench.sh on     # torch.compile phase only (several minutes of compilation)
#   bash benchmarks/device/run_gpu_bench.sh mem    # peak memory over trained steps × group size (~1–2 min)
# Results go to $OUT (or runs/bench/ when OUT is unset): gpu_bench_<mode>.json (written after every phase, so
# a run cut off by its time limit keeps what it finished), the full log and nvidia-smi's view of the device.
set -uo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-off}
out=${OUT:-runs/bench}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/nvidia_smi.csv" 2>&1
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" || exit 1
extra=()
compile=$mode
[ "$mode" = on ] && extra=(--skip-flux)
[ "$mode" = mem ] && compile=none && extra=(--skip-flux --memory-sweep)
python3 benchmarks/gpu_bench.py --out "$out/gpu_bench_$mode.json" --compile "$compile" "${extra[@]}" 2>&1 | tee "$out/gpu_bench_$mode.log"
exit "${PIPESTATUS[0]}"

#!/usr/bin/env bash
# The GPU benchmarks of benchmarks/RESULTS.md: SD-1.5-sized random-weight pipeline, 64×64 latents, one GPU.
# Usage: bash benchmarks/gpu.sh OUT_DIR [PIPELINE] [DEVICE]   (the project installed; run from any folder)
set -u
out=$(realpath "${1:?output folder}"); pipeline=${2:-sd15}; device=${3:-cuda}
mkdir -p "$out" && cd "$(mktemp -d)" || exit 1  # away from a source checkout's folders
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
bench() { python3 -m guidance bench "$@" --pipeline "$pipeline" --device "$device" --overwrite; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
bench overhead --dtype float16 --steps 20 --repeats 7 --json "$out/overhead-fp16.json"
bench memory --dtype float16 --steps 4 --repeats 3 --json "$out/memory-fp16.json"
bench numerics --dtype bfloat16 --steps 10 --json "$out/numerics-bf16.json"
bench numerics --dtype float16 --steps 10 --json "$out/numerics-fp16.json"
bench overhead --dtype float16 --steps 20 --repeats 5 --compile --variants "cfg,cfg (telemetry off),apg,cfgpp" \
    --json "$out/overhead-compiled-fp16.json"
# second pass (after moving ICG's and TSG's host noise to the device without a blocking copy)
bench syncs --dtype float16 --steps 4 --json "$out/syncs-fp16.json"
bench overhead --dtype float16 --steps 20 --repeats 15 \
    --variants "cfg,cfg (telemetry off),apg,cfgpp,icg (gaussian),tsg" --json "$out/overhead-fp16-15.json"
# third pass (the plugin part timed alone)
bench overhead --dtype float16 --steps 20 --repeats 11 --split --variants "cfg,cfg (telemetry off),apg,icg (gaussian)" \
    --json "$out/overhead-split-fp16.json"

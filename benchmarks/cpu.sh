#!/usr/bin/env bash
# The CPU benchmarks of benchmarks/RESULTS.md (about 40 minutes on 2 cores). Run from the repository root; writes
# the JSON rows into OUT_DIR (default benchmarks/results/cpu).
set -eu
out=${1:-benchmarks/results/cpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
guidance bench overhead --pipeline sd15-like --steps 10 --repeats 7 --json "$out/overhead-sd15-like.json" --overwrite
guidance bench overhead --pipeline sd15-like --steps 10 --repeats 7 --variants "pag term" \
    --json "$out/overhead-pag-sd15-like.json" --overwrite
guidance bench overhead --pipeline tiny --steps 10 --repeats 7 --json "$out/overhead-tiny.json" --overwrite
guidance bench overhead --pipeline wan-like --steps 4 --repeats 5 --json "$out/overhead-wan-like.json" --overwrite
guidance bench overhead --pipeline wan-like-t512 --steps 2 --repeats 15 --variants "nag (no CFG),nag + cfg" \
    --json "$out/overhead-nag-wan-like-t512.json" --overwrite
guidance bench overhead --pipeline sd15-like --steps 10 --repeats 7 --variants "nag (no CFG),nag + cfg" \
    --json "$out/overhead-nag-sd15-like.json" --overwrite
guidance bench overhead --pipeline flux-like --steps 2 --repeats 5 --json "$out/overhead-nag-flux-like.json" --overwrite
for pipeline in wan-like-t512 sd15-like flux-like; do
    guidance bench flops --pipeline $pipeline --steps 2 --variants "nag (no CFG),nag + cfg" \
        --json "$out/flops-nag-$pipeline.json" --overwrite
done
for pipeline in wan-like-t512 flux-like; do
    guidance bench memory --pipeline $pipeline --steps 2 --repeats 2 --variants "nag (no CFG)" \
        --json "$out/memory-nag-$pipeline.json" --overwrite
done
guidance bench memory --pipeline wan-like --steps 3 --repeats 3 --json "$out/memory-wan-like.json" --overwrite
guidance bench memory --pipeline sd15-like --steps 4 --repeats 3 --json "$out/memory-sd15-like.json" --overwrite
guidance bench syncs --pipeline sd15-like --steps 4 --json "$out/syncs-sd15-like.json" --overwrite
guidance bench saving --samples 500 --no-progress --json "$out/saving-digits.json" --overwrite

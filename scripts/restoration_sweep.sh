#!/usr/bin/env bash
# Re-run the measurement behind StepVAR's restoration and pruned-scale choice (docs/pruning.md)
# at any resolution, on the validation prompts only (never the held-out set):
#   scripts/restoration_sweep.sh 512 runs/restore512 [extra stepvar options, e.g. --weights DIR]
# 1. compare: paired PSNR / SSIM / score against dense, every configuration interleaved per prompt;
# FastVAR appears as released (`fastvar`: its own widths and keeps; dense where no grid is 32 or 40
# wide) and as its algorithm on the last grids at the same keeps (`fastvar-pos@K`).
# 2. bench: transformer-loop and end-to-end speedups beside the FLOP bounds, interleaved.
# Pruned scales are given as negative indices (from the last scale), so the same list means
# "the last one / two / three grids" at every resolution. Set STEPVAR=path/to/stepvar to pick a
# particular install; THREADS (default 1) sets OMP_NUM_THREADS for both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
res=${1:?usage: scripts/restoration_sweep.sh RESOLUTION OUTDIR [extra options]}
out=${2:?usage: scripts/restoration_sweep.sh RESOLUTION OUTDIR [extra options]}
shift 2
STEPVAR=${STEPVAR:-stepvar}
export OMP_NUM_THREADS=${THREADS:-1}
plus="stepvar:restore=cached"
methods="dense,stepvar@0.4,${plus}@0.4,${plus}:scales=[-3,-2,-1]@0.4,${plus}:scales=[-2,-1]@0.4,${plus}:scales=[-1]@0.4"
methods="${methods},${plus}:scales=[-2,-1]@0.3,${plus}:scales=[-1]@0.3,stepvar:restore=cached_nearest@0.4"
methods="${methods},stepvar:restore=idw@0.4,fastvar,fastvar-pos@0.3,fastvar-pos@0.4,fastvar-pos@0.5"
"$STEPVAR" compare --resolution "$res" --prompts docs/toy_validation_prompts.txt --seed 1000 --warmup 1 \
  --methods "$methods" --out "$out/compare" "$@"
"$STEPVAR" bench --resolution "$res" --repeats 9 --warmup 2 --methods "${methods#dense,}" --out "$out/bench" "$@"

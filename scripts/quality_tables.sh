#!/usr/bin/env bash
# The quality tables of docs/quality.md at one resolution, in one command:
#   scripts/quality_tables.sh RESOLUTION OUTDIR [WEIGHTS_DIR]
# e.g. scripts/quality_tables.sh 256 runs/q256             (the shipped model)
#      scripts/quality_tables.sh 512 runs/q512 path/to/export
# 1. compare: every method x keep on the prompt set (default: the held-out prompts, seed 0), each
#    against dense on the same prompt and seed: score per category, stray-object share, PSNR / SSIM.
# 2. bench: the same configurations, interleaved, median of REPEATS: loop and end-to-end speedups
#    beside the FLOP bounds.
# 3. scripts/render_quality.py: OUTDIR/quality.md (the tables) and OUTDIR/grid_keep0.4.png.
# Settings from the environment: PROMPTS (file), SEED, KEEPS (default 0.3,0.4,0.5), METHODS (comma list
# of presets, each run at every keep; default below), NOKEEP (presets run once, without a keep), REPEATS (9), WARMUP (2), THREADS (1, for
# OMP_NUM_THREADS), STEPVAR (the stepvar command), PYTHON (the Python that has stepvar installed).
# FastVAR: the release's width rule prunes only grids 32 and 40 wide, so at 256 px `fastvar` runs
# dense and takes no keep; there its algorithm is measured as `fastvar-pos` (the scales StepVAR
# prunes) and `fastvar-pos-skip`. `fastvar-skip` is `fastvar` with the last two scales not run
# (skip_last=2): at 256 and 512 px it prunes nothing (at 512 the release's one pruned grid, 32², is
# among the two skipped) and runs once, without a keep (NOKEEP).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/quality_tables.sh RESOLUTION OUTDIR [WEIGHTS_DIR]"
res=${1:?$usage}
out=${2:?$usage}
weights=${3:-}
STEPVAR=${STEPVAR:-stepvar}
PYTHON=${PYTHON:-python3}
PROMPTS=${PROMPTS:-stepvar/toy/heldout_prompts.txt}
SEED=${SEED:-0}
KEEPS=${KEEPS:-0.3,0.4,0.5}
REPEATS=${REPEATS:-9}
WARMUP=${WARMUP:-2}
export OMP_NUM_THREADS=${THREADS:-1}
if [ -z "${METHODS:-}" ]; then
  case "$res" in
    256) METHODS="stepvar,stepvar-plus,fastvar-pos,fastvar-pos-skip,random,texture-only,structure-only"
         NOKEEP=${NOKEEP-fastvar-skip} ;;
    512) METHODS="stepvar,stepvar-plus,fastvar,fastvar-pos,fastvar-pos-skip,random,texture-only,structure-only"
         NOKEEP=${NOKEEP-fastvar-skip} ;;
    *) METHODS="stepvar,stepvar-plus,fastvar,fastvar-skip,fastvar-pos,fastvar-pos-skip,random,texture-only,structure-only" ;;
  esac
fi
# Every method at every keep, pinned (fastvar has no preset keep for --keep to override).
configs="dense"
IFS=, read -ra method_list <<< "$METHODS"
IFS=, read -ra keep_list <<< "$KEEPS"
for m in "${method_list[@]}"; do
  for k in "${keep_list[@]}"; do configs="$configs,$m@$k"; done
done
if [ -n "${NOKEEP:-}" ]; then configs="$configs,$NOKEEP"; fi
extra=(--resolution "$res")
if [ -n "$weights" ]; then extra+=(--weights "$weights"); fi
"$STEPVAR" compare --prompts "$PROMPTS" --seed "$SEED" --warmup 1 --methods "$configs" --out "$out/compare" "${extra[@]}"
"$STEPVAR" bench --repeats "$REPEATS" --warmup "$WARMUP" --methods "$configs" --out "$out/bench" "${extra[@]}"
cmd="scripts/quality_tables.sh $*  # PROMPTS=$PROMPTS SEED=$SEED KEEPS=$KEEPS METHODS=$METHODS REPEATS=$REPEATS THREADS=$OMP_NUM_THREADS"
"$PYTHON" scripts/render_quality.py "$out" --title "${res} px: every method x keep ${KEEPS}" --command "$cmd"

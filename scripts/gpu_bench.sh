#!/usr/bin/env bash
# The GPU check: the CUDA tests, then one same-run bench of the infinity-2b architecture at 1024 px
# (random weights, bf16, batch 1 with CFG), written into docs/benchmarks_gpu.md with absolute times and
# peak GPU memory, then one dense image per offload mode (none, text-encoder, model) for their peak memory. About 3-5 minutes on one H200; refuses to start without a CUDA device.
#
#   bash scripts/gpu_bench.sh            # from the repository root, with stepvar installed
#   PYTHON=/path/to/python bash scripts/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_bench.sh: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'torch not importable')); this script needs a GPU" >&2
    exit 2
fi

OUT=${GPU_BENCH_OUT:-runs/gpu_bench_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$(dirname "$OUT")"
# The composed configurations of docs/quality.md: the StepVAR one measured at fastvar-skip's fidelity
# (two grids before the skipped last scale at keep 0.65, cached-plus-IDW restoration on them,
# guidance dropped from the last scale run; its
# grids named, since the preset itself prunes only the last scale, which skip_last removes) and
# fastvar-skip with the guidance row dropped from scale -3.
COMPOSED="stepvar-plus:scales=[-3,-2]:restore_wide=cached_idw:cfg_drop_from=-2:skip_last=1@0.65,fastvar-skip:cfg_drop_from=-3"
METHODS="dense,stepvar@0.4,stepvar-plus@0.4,fastvar,fastvar-skip,$COMPOSED"

echo "== CUDA tests" >&2
TESTS_LOG=$(mktemp)
if "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$TESTS_LOG"; then TESTS_RC=0; else TESTS_RC=$?; fi

echo "== bench: infinity-2b, 1024 px, bf16, random weights" >&2
BENCH_CMD=("$PY" -m stepvar_cli.app bench --model infinity-2b --resolution 1024 --device cuda --dtype bf16
           --methods "$METHODS" --repeats 3 --warmup 2 --out "$OUT")
if "${BENCH_CMD[@]}"; then BENCH_RC=0; else BENCH_RC=$?; fi

echo "== peak memory with and without offload: infinity-2b, 1024 px, bf16, dense, one image each" >&2
# One process per mode, so each peak is that mode's alone; generate's record holds the peak allocated
# during the generation (reset when it starts) and the KV-cache bytes.
for mode in none text-encoder model; do
    "$PY" -m stepvar_cli.app generate --model infinity-2b --resolution 1024 --device cuda --dtype bf16 \
        --prompt "a red circle above a blue square" --seed 0 --offload "$mode" --out "$OUT/offload_$mode.png" --json \
        > /dev/null || echo "offload $mode: generate failed" >&2
done

"$PY" scripts/gpu_bench_doc.py --report "$OUT/report.json" --tests-log "$TESTS_LOG" --tests-rc "$TESTS_RC" \
    --offload-records "$OUT" \
    --command "stepvar bench --model infinity-2b --resolution 1024 --device cuda --dtype bf16 --methods \"$METHODS\" --repeats 3 --warmup 2" \
    --out docs/benchmarks_gpu.md
rm -f "$TESTS_LOG"
echo "wrote docs/benchmarks_gpu.md (bench report in $OUT)" >&2
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]

#!/usr/bin/env bash
# Reproduces the CLIVE table of docs/results/clive.md: rows (a)-(d) and (g) (configs/clive/*.yaml on top
# of configs/cpu_regions.yaml), each trained and tested on splits seed0, seed1, seed2 of clive-dev
# (70/10/20 train/val/test by image; checkpoint and early stopping on val SRCC), reported as
# mean ± std (ddof 1) of test PLCC/SRCC.
#
#   scripts/clive_table.sh [SHARDS] [OUT] [CACHE]
#
#   SHARDS  annotated clive-dev (default shards/csv; annotated first with `make annotate` if absent)
#   OUT     run folder (default runs/clive); the table is OUT/clive.md and OUT/clive.csv
#   CACHE   feature cache of the frozen backbone and text encoder (default runs/cache), shared by
#           all 15 runs: each image and orientation passes the backbone once
#   STREAMS=2 (env) runs two rows at a time as separate single-threaded processes; a last
#           `rsfiqa ablate` finds every split done (resumable protocol) and writes the full table.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${1:-shards/csv}
OUT=${2:-runs/clive}
CACHE=${3:-runs/cache}
STREAMS=${STREAMS:-2}
RSFIQA=${RSFIQA:-.venv/bin/rsfiqa}
ROWS=(configs/clive/a_baseline.yaml configs/clive/b_mhf.yaml configs/clive/c_mhf_text.yaml configs/clive/d_full.yaml
      configs/clive/g_rsa_region.yaml)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process: no oversubscription on a shared CPU

if [ ! -f "$SHARDS/index.json" ]; then
  make annotate OUT="$SHARDS" ARGS='dataset.mos_range=[0,100]'
fi

ablate() {  # ablate NAME CONFIG...
  local name=$1; shift
  "$RSFIQA" ablate --base configs/cpu_regions.yaml --configs "$@" --shards "$SHARDS" --splits seed0,seed1,seed2 \
    --out "$OUT" --name "$name" --model.feature_cache "$CACHE" --trainer.enable_progress_bar false
}

mkdir -p "$OUT"
start=$SECONDS
pids=()
for ((s = 0; s < STREAMS; s++)); do
  stream_rows=()
  for ((i = s; i < ${#ROWS[@]}; i += STREAMS)); do stream_rows+=("${ROWS[i]}"); done
  ablate "stream$s" "${stream_rows[@]}" > "$OUT/stream$s.log" 2>&1 &
  pids+=($!)
done
for s in "${!pids[@]}"; do
  wait "${pids[s]}" || { echo "stream $s failed: see $OUT/stream$s.log" >&2; exit 1; }
done
ablate clive "${ROWS[@]}" > "$OUT/table.log" 2>&1
echo "wall time: $((SECONDS - start)) s"
cat "$OUT/clive.md"

#!/usr/bin/env bash
# The paper's Multi30K grid: run.sh on each config with the same budget, then RESULTS.md.
#
#   MULTI30K_DIR=../shared/multi30k bash recipes/multi30k/grid.sh [--minutes M | --epochs E]
#       [--jobs N] [--results FILE] [CONFIG...]
#
# --jobs N runs N configs at a time, each with OMP_NUM_THREADS = cores / N unless it is set (how
# the results' grid ran on 2 cores: two one-thread runs side by side); their output then goes to
# the logs only.
# CONFIGs default to every configs/multi30k/*.yaml except the language variants (*-en-fr, *-en-cs).
# A config whose run already has a results.json is skipped, and an interrupted run is resumed, so
# a grid can be started again. A failed run is reported and the grid goes on. Each finished run's
# results.json is kept in results/ beside RESULTS.md (default recipes/multi30k/results/, one file
# per config and budget, committed with the table), and RESULTS.md is regenerated from every file
# there: the table keeps rows of earlier invocations and other machines (e.g. the main rows at
# --epochs 10, the rest at a shorter budget).
# Each run's output is also kept in runs/grid-logs/NAME.log (GRID_LOG_DIR).
# Run from the repository root.
set -euo pipefail

usage() {
  echo "usage: bash recipes/multi30k/grid.sh [--minutes M | --epochs E] [--jobs N] [--results FILE] [CONFIG...]" >&2
  exit 2
}

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$RECIPE_DIR/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
export MULTI30K_DIR="${MULTI30K_DIR:-data/multi30k}"
RESULTS="$RECIPE_DIR/RESULTS.md"
LOG_DIR="${GRID_LOG_DIR:-runs/grid-logs}"

BUDGET=()
CONFIGS=()
JOBS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes|--epochs) [ $# -ge 2 ] || usage; BUDGET+=("$1" "$2"); shift 2 ;;
    --results) [ $# -ge 2 ] || usage; RESULTS="$2"; shift 2 ;;
    --jobs)
      [ $# -ge 2 ] || usage
      [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "grid.sh: error: --jobs needs a positive whole number, got '$2'" >&2; exit 2; }
      JOBS="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "grid.sh: error: unknown option $1" >&2; exit 2 ;;
    *) CONFIGS+=("$1"); shift ;;
  esac
done

if [ ${#BUDGET[@]} -gt 2 ]; then
  echo "grid.sh: error: give either --minutes or --epochs, not both" >&2
  exit 2
fi

GRID=()
for config in "$REPO"/configs/multi30k/*.yaml; do
  case "$(basename "$config")" in
    *-en-??.yaml) ;;  # language variants are not part of the paper's grid
    *) GRID+=("$config") ;;
  esac
done
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=("${GRID[@]}")

KEPT="$(dirname "$RESULTS")/results"
keep() {  # results.json NAME -> $KEPT/NAME.BUDGET.json, named by the budget the run recorded
  local budget
  budget="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["budget"])' "$1" \
    | tr -d ' -')"
  cp "$1" "$KEPT/$2.${budget:-config}.json"
}
mkdir -p "$LOG_DIR" "$KEPT"
if [ "$JOBS" -gt 1 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  CORES="$(nproc 2>/dev/null || echo 1)"
  export OMP_NUM_THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))
fi
FAILED_DIR="$(mktemp -d)"
trap 'rm -rf "$FAILED_DIR"' EXIT

run_one() {  # CONFIG NAME RUN_DIR: run.sh into the log (and stdout when alone), keep results.json
  local config=$1 name=$2 run_dir=$3 status=0
  echo "=== $config (${BUDGET[*]:-config budget}); log: $LOG_DIR/$name.log"
  if [ "$JOBS" -gt 1 ]; then
    bash "$RECIPE_DIR/run.sh" "$config" "${BUDGET[@]}" > "$LOG_DIR/$name.log" 2>&1 || status=$?
  else
    bash "$RECIPE_DIR/run.sh" "$config" "${BUDGET[@]}" 2>&1 | tee "$LOG_DIR/$name.log" || status=$?
  fi
  if [ "$status" -ne 0 ]; then
    echo "=== $config FAILED (see $LOG_DIR/$name.log)" >&2
    echo "$config" > "$FAILED_DIR/$name"
    return 0
  fi
  [ "$JOBS" -eq 1 ] || echo "=== $config done"
  keep "$run_dir/results.json" "$name"
}

FAILED=()
for config in "${CONFIGS[@]}"; do
  name="$(basename "$config" .yaml)"
  DESCRIPTION="$("$PYTHON" "$RECIPE_DIR/make_results.py" describe "$config")" || {
    FAILED+=("$config"); continue; }
  RUN_DIR="$(eval "$DESCRIPTION"; echo "$RUN_DIR")"
  if [ -e "$RUN_DIR/results.json" ]; then
    echo "=== skip $config: $RUN_DIR/results.json exists (remove $RUN_DIR to run it again)"
    keep "$RUN_DIR/results.json" "$name"
  elif [ "$JOBS" -gt 1 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    run_one "$config" "$name" "$RUN_DIR" &
  else
    run_one "$config" "$name" "$RUN_DIR"
  fi
done
wait
for failed in "$FAILED_DIR"/*; do
  [ -e "$failed" ] && FAILED+=("$(cat "$failed")")
done

shopt -s nullglob
KEPT_FILES=("$KEPT"/*.json)
"$PYTHON" "$RECIPE_DIR/make_results.py" table --output "$RESULTS" "${KEPT_FILES[@]}"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "grid.sh: ${#FAILED[@]} run(s) failed: ${FAILED[*]}" >&2
  exit 1
fi

#!/usr/bin/env bash
# One Multi30K recipe end to end: data, tokenizer, training within a budget, test translation
# with beam 5, sacreBLEU (cased, and lowercased for comparison with the paper), memory report,
# {run_dir}/results.json, and the TensorBoard command.
#
#   MULTI30K_DIR=../shared/multi30k bash recipes/multi30k/run.sh CONFIG [--minutes M | --epochs E]
#
# --minutes M: train for at most M minutes of wall clock (the config's max_epochs still applies).
# --epochs E:  train for E epochs, without the config's time limit (early stopping still applies).
# Neither: the config's own budget. The config file is never edited.
# Run again after an interruption (a killed session, a reboot), it resumes training from the run's
# last complete checkpoint with the same budget; the wall time reported adds up every attempt.
# MULTI30K_DIR defaults to data/multi30k; when it holds no Multi30K files they are fetched there.
# PYTHON selects the interpreter (default: python3). Run from the repository root: relative paths
# in the config (run_dir, data.dir) are relative to the current directory.
set -euo pipefail

usage() {
  echo "usage: bash recipes/multi30k/run.sh CONFIG [--minutes M | --epochs E]" >&2
  exit 2
}
fail() {
  echo "run.sh: error: $*" >&2
  exit 2
}

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$RECIPE_DIR/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
export MULTI30K_DIR="${MULTI30K_DIR:-data/multi30k}"

CONFIG=""
BUDGET="config"
TRAIN_BUDGET=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes|--epochs)
      [ $# -ge 2 ] || usage
      [ "$BUDGET" = "config" ] || fail "give either --minutes or --epochs, not both"
      [[ "$2" =~ ^[0-9]+([.][0-9]+)?$ ]] || fail "$1 needs a positive number, got '$2'"
      if [ "$1" = "--minutes" ]; then
        TRAIN_BUDGET=(--max-minutes "$2")
      else
        [[ "$2" =~ ^[0-9]+$ ]] || fail "--epochs needs a whole number, got '$2'"
        TRAIN_BUDGET=(--max-epochs "$2" --max-minutes none)
      fi
      BUDGET="$1 $2"
      shift 2
      ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) fail "unknown option $1" ;;
    *) [ -z "$CONFIG" ] || usage; CONFIG="$1"; shift ;;
  esac
done
[ -n "$CONFIG" ] || usage
[ -f "$CONFIG" ] || fail "config $CONFIG: no such file"

START_SECONDS=$SECONDS
nmt() { "$PYTHON" -m nmt "$@"; }
step() { echo; echo "== $*"; }

step "data: $MULTI30K_DIR"
if [ ! -e "$MULTI30K_DIR/train.en.gz" ] && [ ! -e "$MULTI30K_DIR/train.en" ]; then
  "$PYTHON" "$REPO/data/fetch_multi30k.py" "$MULTI30K_DIR" || exit 2
fi
DESCRIPTION="$("$PYTHON" "$RECIPE_DIR/make_results.py" describe "$CONFIG")" || exit 2
eval "$DESCRIPTION"  # NAME, RUN_DIR, TEST_REF, REVERSIBLE
[ -n "$TEST_REF" ] || fail "data.test: $CONFIG's test split has no target-language file in $MULTI30K_DIR"
echo "run directory: $RUN_DIR"

step "prepare"
nmt prepare "$CONFIG"

# An interrupted earlier attempt left checkpoints: continue it (its training time counts towards
# --minutes) and add its wall time to this one's.
RESUME=()
EARLIER_SECONDS=0
if compgen -G "$RUN_DIR/checkpoints/step-*.pt" > /dev/null; then
  RESUME=(--resume)
  EARLIER_SECONDS="$(cat "$RUN_DIR/recipe_seconds" 2>/dev/null || echo 0)"
  [[ "$EARLIER_SECONDS" =~ ^[0-9]+$ ]] || EARLIER_SECONDS=0
  echo "resuming the interrupted run in $RUN_DIR (earlier attempts: $EARLIER_SECONDS s)"
fi
# The code this run trains with, taken now (the checkout may move on before the run ends); a
# resumed run that changed code records both.
COMMIT="$("$PYTHON" "$RECIPE_DIR/make_results.py" commit)"
if [ ${#RESUME[@]} -gt 0 ] && [ -s "$RUN_DIR/recipe_commit" ]; then
  EARLIER_COMMIT="$(cat "$RUN_DIR/recipe_commit")"
  case "$EARLIER_COMMIT" in
    "$COMMIT"|*" then $COMMIT") COMMIT="$EARLIER_COMMIT" ;;
    *) COMMIT="$EARLIER_COMMIT then $COMMIT" ;;
  esac
fi
echo "$COMMIT" > "$RUN_DIR/recipe_commit"
START_SECONDS=$((START_SECONDS - EARLIER_SECONDS))
trap 'echo $((SECONDS - START_SECONDS)) > "$RUN_DIR/recipe_seconds"' EXIT
trap 'exit 143' TERM HUP INT  # still record the time when stopped

step "train (budget: $BUDGET)"
nmt train "$CONFIG" "${TRAIN_BUDGET[@]}" "${RESUME[@]}"

CHECKPOINT="$RUN_DIR/best.pt"
[ -e "$CHECKPOINT" ] || CHECKPOINT="$RUN_DIR/latest.pt"
[ -e "$CHECKPOINT" ] || fail "training wrote no checkpoint in $RUN_DIR"

step "translate and score the test set (beam 5, $CHECKPOINT)"
nmt evaluate --checkpoint "$CHECKPOINT" --split test --beam-size 5 \
  --output "$RUN_DIR/test.hyp" --json > "$RUN_DIR/test.cased.json"
nmt evaluate --hyp "$RUN_DIR/test.hyp" --ref "$TEST_REF" --lowercase --json \
  > "$RUN_DIR/test.lowercased.json"

BENCH_ARGS=()
if [ "$REVERSIBLE" = 1 ]; then
  step "memory report"
  if nmt bench memory --help > /dev/null 2>&1; then
    if nmt bench memory --config "$CONFIG" --checkpoint "$CHECKPOINT" --batches 20 --json \
        > "$RUN_DIR/bench_memory.json"; then
      cat "$RUN_DIR/bench_memory.json"
      BENCH_ARGS=(--bench-memory "$RUN_DIR/bench_memory.json")
    else
      echo "warning: nmt bench memory failed; results.json keeps the logged memory ratios only" >&2
    fi
  else
    echo "nmt bench memory is not available in this version; using the logged memory ratios"
  fi
fi

step "results"
"$PYTHON" "$RECIPE_DIR/make_results.py" collect --run-dir "$RUN_DIR" --config "$CONFIG" \
  --cased "$RUN_DIR/test.cased.json" --lowercased "$RUN_DIR/test.lowercased.json" \
  "${BENCH_ARGS[@]}" --beam-size 5 --wall-seconds $((SECONDS - START_SECONDS)) --budget "$BUDGET" \
  --commit "$COMMIT"
echo "wall time: $(( (SECONDS - START_SECONDS) / 60 )) min $(( (SECONDS - START_SECONDS) % 60 )) s"
echo
# the parent folder as logdir, so the run shows under its name beside any other runs there
echo "TensorBoard (training curves, memory/encoder_ratio, memory/decoder_ratio, memory/total_ratio; this run is"
echo "'$(basename "$RUN_DIR")/tensorboard', beside the other runs in $(dirname "$RUN_DIR")):"
echo "  tensorboard --logdir $(dirname "$RUN_DIR") --host 127.0.0.1"

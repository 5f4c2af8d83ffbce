#!/usr/bin/env bash
# The speed and scaling benches of the Emb+20H models against their baselines, on one device:
#   [DEV=cuda|cpu] [OUT=dir] [STEPS=9] [LENGTHS=10,20,50,100,200] bash recipes/multi30k/bench.sh
# Each bench writes OUT/NAME.json (default OUT: runs/bench); on CUDA the reports include the peak
# allocated memory. Optional per-bench time limits: T1..T5 seconds (0: none). Run from the repository root.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD MULTI30K_DIR=${MULTI30K_DIR:-data/multi30k}
OUT=${OUT:-runs/bench}; mkdir -p $OUT
B="python3 -m nmt bench"
DEV=${DEV:-auto}; STEPS=${STEPS:-9}; LENGTHS=${LENGTHS:-10,20,50,100,200}
C=configs/multi30k
(nvidia-smi -L 2>/dev/null; python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')") 2>&1 | tee $OUT/machine.txt
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; local t0=$SECONDS
  timeout $limit "$@" > $OUT/$name.json 2> >(tee -a $OUT/stderr.log | tail -n 3 >&2); echo "rc=$? in $((SECONDS-t0)) s"; head -c 1500 $OUT/$name.json; echo; }
run speed_revgru_vs_gru ${T1:-0} $B speed --config $C/revgru-emb20h.yaml --vs $C/gru-emb20h.yaml --device $DEV --steps $STEPS --json
run scaling_revgru ${T2:-0} $B scaling --config $C/revgru-emb20h.yaml --lengths $LENGTHS --device $DEV --json
run speed_revlstm_vs_lstm ${T3:-0} $B speed --config $C/revlstm-emb20h.yaml --vs $C/lstm-emb20h.yaml --device $DEV --steps $STEPS --json
run speed_gru ${T4:-0} $B speed --config $C/gru.yaml --device $DEV --steps $STEPS --json
run scaling_revlstm ${T5:-0} $B scaling --config $C/revlstm-emb20h.yaml --lengths $LENGTHS --device $DEV --json

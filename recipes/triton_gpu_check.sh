#!/usr/bin/env bash
# The fused Triton path on a GPU, in one short run (budget: well under 10 minutes, most of it
# kernel compilation): exactness on CUDA tensors (the interpreter tests, compiled, the readout's
# loss and dropout kernels among them; plus the GPU-only check that activations inside the
# kernels equal torch's), then time per time step of one reversible layer's training step
# against the tensor path and cuDNN, and whole training steps with fused products against cuDNN
# (needs the Multi30K data at MULTI30K_DIR).
#   bash recipes/triton_gpu_check.sh [OUT_DIR]
set -u
out=${1:-${OUT:-.}}
mkdir -p "$out"
export REVNMT_TRITON_TEST_DEVICE=cuda TRITON_INTERPRET=0 OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
timeout 300 python -m pytest -q -x tests/reversible/test_triton_kernels.py \
    tests/reversible/test_triton_gru_products.py tests/reversible/test_triton_lstm_products.py \
    tests/models/test_triton_readout.py 2>&1 | tail -30 | tee "$out/exactness.txt"
for cell in revgru revlstm; do
    for hidden in 300 1024; do
        steps=$([ "$hidden" = 300 ] && echo 30 || echo 100)
        timeout 120 python -m nmt.reversible.fused_bench --cell $cell --hidden $hidden \
            --batch 64 --steps $steps --device cuda | tee -a "$out/bench.jsonl"
    done
done
# a whole training step (Multi30K Emb+20H, batch 64) against cuDNN: fused products, chunks of 8
# read 4 at a time (a memory-bounded GPU setting; see README)
for cell in gru lstm; do
    MULTI30K_DIR=${MULTI30K_DIR:-data/multi30k} timeout 200 python -m nmt bench speed \
        --config configs/multi30k/rev$cell-emb20h.yaml --vs configs/multi30k/$cell-emb20h.yaml \
        --steps 10 --device cuda --json --set model.reversible.kernels=triton \
        --set model.reversible.fused_products=true --set model.reversible.chunk_steps=8 \
        --set model.reversible.readout_steps=4 | tee -a "$out/step_speed.jsonl"
done

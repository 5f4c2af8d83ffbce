"""Launches per recurrent time step of one training step (`nmt bench speed --count-launches`).

One training step of the config's model on its batch -- forward (`training_loss`) and backward;
zero_grad, gradient clipping, the optimizer step and the host's read of the loss are left out --
runs under an OpCounter (nmt/reversible/launch_count.py): every aten op that would launch a device
kernel counts (views, allocations and other metadata ops do not), and so does every Triton kernel
launch (the fused path: `model.reversible.kernels`, see nmt/reversible/step_kernels.py). The sum
is divided by the batch's recurrent time steps: the padded source length plus the padded target
length (every step of the encoder and of the decoder runs forward, then reversed and
backpropagated, once per training step). The readout (attention, output layer, loss), the
embeddings and the per-chunk products are included, amortised over the steps.
"""
from __future__ import annotations

import collections

import torch


def count_training_step(model, batch, *, label_smoothing: float = 0.0, top: int = 12) -> dict:
    """The counts of one forward + backward of `model` on `batch` (see the module docstring)."""
    from nmt.reversible import triton_kernels
    from nmt.reversible.launch_count import OpCounter

    model.zero_grad(set_to_none=True)
    phases, ops = {}, collections.Counter()

    def measured(name, thunk):
        counter, before = OpCounter(), triton_kernels.LAUNCHES[0]
        with counter:
            result = thunk()
        phases[name] = {"aten_compute": counter.compute, "aten_metadata": counter.metadata,
                        "triton_launches": triton_kernels.LAUNCHES[0] - before,
                        "host_syncs": len(counter.sync), "syncs": sorted(set(counter.sync))}
        ops.update(counter.ops)
        return result

    output = measured("forward", lambda: model.training_loss(batch, label_smoothing=label_smoothing))
    measured("backward", lambda: (output.loss / batch.num_tgt_tokens).backward())
    src_steps, tgt_steps = int(batch.src.shape[1]), int(batch.tgt_in.shape[1])
    steps = src_steps + tgt_steps

    def launches(*names):
        return sum(phases[n]["aten_compute"] + phases[n]["triton_launches"] for n in names)

    rnn = getattr(model.encoder, "rnn", None)
    return {
        "kernels": getattr(rnn, "kernels", None),
        "fused": _fused(model, batch),
        "launches_per_time_step": launches("forward", "backward") / steps,
        "forward_launches_per_time_step": launches("forward") / steps,
        "time_steps": steps, "src_steps": src_steps, "tgt_steps": tgt_steps,
        "batch_sentences": int(batch.src.shape[0]),
        "divisor": "padded source length + padded target length of the batch",
        "counted": "forward + backward (no zero_grad, clipping, optimizer step or loss read)",
        "phases": phases,
        "top_ops": [[name, count] for name, count in ops.most_common(top)],
    }


def _fused(model, batch) -> bool:
    encoder = model.encoder
    if not hasattr(encoder, "new_buffer"):
        return False
    from nmt.reversible.step_kernels import is_stack_buffer

    with torch.enable_grad():
        return is_stack_buffer(encoder.new_buffer(1, batch.src.device))

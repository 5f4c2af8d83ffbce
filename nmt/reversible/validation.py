"""Checks of a sequence run's arguments, made before any computation (ValueError naming the problem)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from nmt.reversible.plan import MemoryMode


def check_run(rnn, inputs: Tensor, mask: Optional[Tensor], *, mode, initial_state, buffer,
              embedding, input_dropout: Optional[Tensor], layer_dropout: Optional[Tensor] = None,
              readout, readout_extras: Sequence) -> Tensor:
    """Validate a ReversibleRNN.forward call; returns the (batch, T) bool mask (all True if None)."""
    if not isinstance(mode, MemoryMode):
        raise ValueError(f"mode {mode!r} is not one of "
                         + ", ".join(f"MemoryMode.{m.name}" for m in MemoryMode))
    if not isinstance(inputs, Tensor):
        raise ValueError(f"inputs must be a tensor, got {type(inputs).__name__}")
    if embedding is not None:
        if not isinstance(embedding, torch.nn.Module):
            raise ValueError(f"embedding must be an nn.Module, got {type(embedding).__name__}")
        if inputs.dim() != 2 or inputs.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token-id inputs must be (batch, T) integers, got "
                             f"{tuple(inputs.shape)} {inputs.dtype}")
        width = getattr(embedding, "embedding_dim", rnn.input_size)
        if width != rnn.input_size:
            raise ValueError(f"embedding width {width} does not match input_size {rnn.input_size}")
    else:
        if inputs.dim() != 3 or not inputs.is_floating_point():
            raise ValueError(f"inputs must be floats of shape (batch, T, {rnn.input_size}) or "
                             f"token ids with an embedding, got {tuple(inputs.shape)} {inputs.dtype}")
        if inputs.shape[2] != rnn.input_size:
            raise ValueError(f"inputs have {inputs.shape[2]} features, the first layer expects "
                             f"input_size={rnn.input_size}")
    batch, steps = inputs.shape[0], inputs.shape[1]
    if batch < 1 or steps < 1:
        raise ValueError(f"inputs need at least one sequence and one step, got {tuple(inputs.shape)}")
    mask = _check_mask(mask, batch, steps, inputs.device)
    _check_initial_state(rnn, initial_state, batch)
    if buffer is not None:
        if len(buffer.shape) != 2 or buffer.shape[0] != batch or buffer.shape[1] < rnn.half_size:
            raise ValueError(f"buffer of shape {buffer.shape} does not fit a batch of {batch} with "
                             f"half states of {rnn.half_size} units")
        if mode is MemoryMode.REVERSIBLE and not buffer.keep_words:
            raise ValueError("reversible mode needs a buffer that keeps its words (keep_words=True)")
    if input_dropout is not None and tuple(input_dropout.shape) != (batch, rnn.input_size):
        raise ValueError(f"input_dropout mask must be (batch, input) = ({batch}, {rnn.input_size}), "
                         f"got {tuple(input_dropout.shape)}")
    expected = (rnn.num_layers - 1, batch, rnn.hidden_size)
    if layer_dropout is not None and tuple(layer_dropout.shape) != expected:
        raise ValueError(f"layer_dropout masks must be (layers - 1, batch, H) = {expected}, "
                         f"got {tuple(layer_dropout.shape)}")
    if readout_extras and readout is None:
        raise ValueError("readout_extras were given without a readout")
    if readout is not None and not callable(readout):
        raise ValueError(f"readout must be callable, got {type(readout).__name__}")
    return mask


def _check_mask(mask: Optional[Tensor], batch: int, steps: int, device) -> Tensor:
    if mask is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True on real steps), got {mask.dtype}")
    if mask.dim() != 2 or mask.shape[0] != batch:
        raise ValueError(f"mask must be (batch, T) = ({batch}, {steps}), got {tuple(mask.shape)}")
    if mask.shape[1] != steps:
        raise ValueError(f"mask has length {mask.shape[1]} but the inputs have {steps} steps")
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must be True on a prefix of each row (real steps, then padding)")
    return mask


def _check_initial_state(rnn, initial_state, batch: int) -> None:
    if initial_state is None:
        return
    expected = (rnn.num_layers, batch, rnn.hidden_size)
    is_lstm = rnn.state_parts == 4
    tensors = initial_state if isinstance(initial_state, tuple) else (initial_state,)
    if len(tensors) != (2 if is_lstm else 1):
        raise ValueError("initial_state must be a pair (h, c) for revlstm" if is_lstm
                         else "initial_state must be one tensor (layers, batch, H) for revgru")
    for name, tensor in zip("hc", tensors):
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != expected:
            shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"initial state {name} must be (layers, batch, H) = {expected}, got {shape}")

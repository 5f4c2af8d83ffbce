"""Reversible (RevGRU/RevLSTM) source encoder: keeps only what attention reads.

The encoder's states are not stored: the attention context is built from what a reversible run
can afford (design notes, section 6):
- emb: the source embeddings, looked up again from the token ids (free);
- slice k / proj k: the first k units of the top layer's h1, or a learned k-dim projection of the
  top state, stored per step by the ReversibleRNN (32 or 16 bits);
- emb+slice, emb+proj: both, concatenated;
- hidden: every top-layer state, only with `memory_saving=False` (the paper's 300H row): the
  encoder then runs the same fixed-point steps with plain autograd and stores everything.

The encoder's information buffer continues into the decoder: one buffer per batch, whose heads
are charged once, to the decoder (see reversible_decoder.py). Dropout feeding the recurrence uses
masks fixed per sequence (`locked_mask`), so the reverse pass recomputes every step bit for bit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nmt.models.embeddings import PAD_ID
from nmt.models.encoders import length_mask
from nmt.reversible import (AttentionStorage, InformationBuffer, MemoryAccount, MemoryMode,
                            ReversibleRNN, count_memory, from_fixed)

ENCODER_TAG = "encoder"


def locked_mask(batch: int, size: int, probability: float, *, like: Tensor,
                training: bool) -> Optional[Tensor]:
    """A dropout mask (batch, size) drawn once per sequence (None when inactive)."""
    if not training or probability <= 0.0:
        return None
    keep = 1.0 - probability
    return torch.bernoulli(torch.full((batch, size), keep, device=like.device)) / keep


@dataclass
class ReversibleEncoderOutput:
    """EncoderOutput plus what a reversible decoder continues from.

    context (batch, src_len, context_size), mask (batch, src_len), lengths (batch,),
    final_hidden (layers, batch, H) and final_cell (RevLSTM, else None): float, differentiable;
    keys: filled in by the decoder (`attach`); buffer: the batch's information buffer, after the
    encoder's steps (keeps its words in training, head only in inference);
    memory: the encoder's counted bits (heads not charged); kept_bytes: measured bytes kept.
    """

    context: Tensor
    mask: Tensor
    lengths: Tensor
    final_hidden: Tensor
    final_cell: Optional[Tensor]
    buffer: InformationBuffer
    memory: Optional[MemoryAccount] = None
    kept_bytes: dict = dataclasses.field(default_factory=dict)
    keys: Optional[Tensor] = None
    outputs: Optional[Tensor] = None

    def reorder(self, index: Tensor) -> "ReversibleEncoderOutput":
        """Select (or repeat) sentences; the (head-only) buffer is copied with its rows."""
        def rows(tensor, dim=0):
            return None if tensor is None else tensor.index_select(dim, index)

        buffer = self.buffer.clone()
        buffer.reorder(index)
        return dataclasses.replace(
            self, context=rows(self.context), mask=rows(self.mask), lengths=rows(self.lengths),
            final_hidden=rows(self.final_hidden, 1), final_cell=rows(self.final_cell, 1),
            keys=rows(self.keys), outputs=rows(self.outputs), buffer=buffer)

    def with_keys(self, keys: Tensor) -> "ReversibleEncoderOutput":
        return dataclasses.replace(self, keys=keys)


class ReversibleEncoder(nn.Module):
    """Embeds the source and runs a reversible stack over it (see the module docstring).

    Args:
        cell: "revgru" or "revlstm"; vocab_size, embedding_dim: source embeddings.
        hidden, layers, max_forget_bits: the ReversibleRNN.
        context: one of emb, slice, proj, emb+slice, emb+proj, hidden (needs memory_saving=False).
        size, precision: stored units per step (slice/proj) and their bits (32 or 16).
        dropout: locked dropout on the embeddings, between layers and on the stored values.
        per_step_dropout: the attention context (embeddings and stored values) instead gets
            dropout per position, as a plain encoder's outputs do (the recurrence keeps its masks).
        buffer_width: columns of the shared buffer (>= hidden / 2; the decoder's half may be wider).
        charges_head: charge the buffer's heads to this encoder (when no reversible decoder
            continues the buffer; otherwise the decoder pays them).
    """

    def __init__(self, cell: str, vocab_size: int, *, embedding_dim: int, hidden: int,
                 layers: int = 1, max_forget_bits: Optional[int] = 3, context: str = "emb",
                 size: Optional[int] = None, precision: int = 32, dropout: float = 0.0,
                 memory_saving: bool = True, buffer_width: Optional[int] = None,
                 charges_head: bool = False, per_step_dropout: bool = True):
        super().__init__()
        self.part = None if context == "emb" else context.split("+")[-1]
        if self.part == "hidden" and memory_saving:
            raise ValueError("context 'hidden' stores every encoder state: "
                             "needs memory_saving=False")
        self.use_embeddings = context.startswith("emb")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        storage = (AttentionStorage(self.part, size, precision=precision)
                   if self.part in ("slice", "proj") else None)
        self.rnn = ReversibleRNN(cell, embedding_dim, hidden, num_layers=layers,
                                 max_forget_bits=max_forget_bits, storage=storage)
        self.context_kind, self.precision, self.dropout = context, precision, dropout
        self.memory_saving = memory_saving
        self.per_step_dropout = per_step_dropout
        self.mode = MemoryMode.REVERSIBLE if memory_saving else MemoryMode.REFERENCE
        self.hidden, self.layers = hidden, layers
        self.final_size = hidden
        stored_size = {"slice": size, "proj": size, "hidden": hidden}.get(self.part, 0)
        self.context_size = stored_size + (embedding_dim if self.use_embeddings else 0)
        self.buffer_width = max(buffer_width or 0, self.rnn.half_size)
        self.charges_head = charges_head
        self._memory: dict = {}

    @property
    def has_cell(self) -> bool:
        return self.rnn.state_parts == 4

    def new_buffer(self, batch: int, device) -> InformationBuffer:
        """The batch's shared buffer; it keeps its words only when a backward pass will follow."""
        return InformationBuffer((batch, self.buffer_width), device=device,
                                 keep_words=torch.is_grad_enabled())

    def forward(self, src: Tensor, src_lengths: Tensor) -> ReversibleEncoderOutput:
        """src (batch, src_len) long, src_lengths (batch,) -> ReversibleEncoderOutput."""
        if bool((src_lengths < 1).any()):
            raise ValueError("every source sentence needs at least one token (e.g. EOS)")
        batch, src_len = src.shape
        mask = length_mask(src_lengths, src_len)
        input_mask = locked_mask(batch, self.embedding.embedding_dim, self.dropout, like=src,
                                 training=self.training)
        layer_masks = self._layer_masks(batch, src)
        buffer = self.new_buffer(batch, src.device)
        mode = self.mode if torch.is_grad_enabled() else MemoryMode.REFERENCE
        if self.part == "hidden":
            run, stored = self._run_storing_states(src, mask, buffer, input_mask, layer_masks)
        else:
            run = self.rnn(src, mask, mode=mode, buffer=buffer, embedding=self.embedding,
                           input_dropout=input_mask, layer_dropout=layer_masks, tag=ENCODER_TAG)
            stored = run.stored
        pieces = []
        if self.use_embeddings:
            pieces.append(self._context_dropout(self.embedding(src), input_mask))
        if stored is not None:
            stored_mask = None if self.per_step_dropout else locked_mask(
                batch, stored.shape[-1], self.dropout, like=src, training=self.training)
            pieces.append(self._context_dropout(stored, stored_mask))
        context = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        final_hidden, final_cell = run.final if self.has_cell else (run.final, None)
        memory = count_memory(self.rnn, mask, buffer, tag=ENCODER_TAG,
                              charge_head=self.charges_head)
        if not self.memory_saving:  # everything stored: nothing saved
            memory = dataclasses.replace(memory, used_bits=memory.normal_bits,
                                         optimal_bits=float(memory.normal_bits))
        if torch.is_grad_enabled():
            kept = sum(run.kept_bytes.values()) if run.kept_bytes else 0
            self._memory = {"encoder_ratio": memory.ratio_used,
                            "encoder_optimal_ratio": memory.ratio_optimal,
                            "activation_mib": kept / float(1 << 20)}
        return ReversibleEncoderOutput(
            context=context, mask=mask, lengths=src_lengths, final_hidden=final_hidden,
            final_cell=final_cell, buffer=buffer, memory=memory, kept_bytes=dict(run.kept_bytes))

    def _context_dropout(self, values: Tensor, sequence_mask: Optional[Tensor]) -> Tensor:
        """values (batch, src_len, size): per-position dropout, or the sentence's mask."""
        if self.per_step_dropout:
            return F.dropout(values, self.dropout, training=self.training)
        return values if sequence_mask is None else values * sequence_mask.unsqueeze(1)

    def memory_report(self) -> dict:
        """The encoder's figures for the last training batch (a reversible decoder reports them
        too, with the shared buffer's total as activation_mib)."""
        return dict(self._memory)

    def _layer_masks(self, batch: int, like: Tensor) -> Optional[Tensor]:
        if self.layers == 1 or not self.training or self.dropout <= 0.0:
            return None
        return torch.stack([locked_mask(batch, self.hidden, self.dropout, like=like, training=True)
                            for _ in range(self.layers - 1)])

    def _run_storing_states(self, src, mask, buffer, input_mask, layer_masks):
        """memory_saving=False with context 'hidden': the fixed-point steps with plain autograd,
        keeping every top-layer state (batch, src_len, H) for attention (zero on padding)."""
        rnn = self.rnn
        state = rnn.exact_state(None, src.shape[0], src.device)
        values = [tuple(from_fixed(part) for part in layer) for layer in state]
        tops: List[Tensor] = []
        for t in range(src.shape[1]):
            x = self.embedding(src[:, t])
            x = x if input_mask is None else x * input_mask
            state, values, _ = rnn.step(x, state, values, buffer, mask[:, t], tag=ENCODER_TAG,
                                        layer_dropout=layer_masks)
            top = torch.cat(values[-1][:2], dim=-1)
            zero = torch.zeros((), device=top.device)
            tops.append(torch.where(mask[:, t].view(-1, 1), top, zero))
        run = _StatesRun(final=rnn.join(values), kept_bytes={})
        states = torch.stack(tops, dim=1)
        if self.precision == 16:  # as the plain model's 16-bit context (gradient straight through)
            states = states + (states.detach().half().float() - states.detach())
        return run, states


@dataclass
class _StatesRun:
    final: object
    kept_bytes: dict

"""Reversible (RevGRU/RevLSTM) source encoder: keeps only what attention reads.

The encoder's states are not stored: the attention context is built from what a reversible run
can afford (MacKay et al. 2018; docs/design.md):
- emb: the source embeddings, looked up again from the token ids (free);
- slice k / proj k: the first k units of the top layer's h1, or a learned k-dim projection of the
  top state, stored per step by the ReversibleRNN (32 or 16 bits);
- emb+slice, emb+proj: both, concatenated;
- hidden: every top-layer state (the paper's 300H row): the encoder then runs the same
  fixed-point steps with plain autograd and stores everything (config.py requires
  `memory_saving: false` for it, and the counts say nothing was saved).

The encoder's information buffer continues into the decoder: one buffer per batch. The encoder's
counts charge it the buffer's heads as if it had its own (a standalone encoder needs them); the
model's total charges them once (nmt/models/memory.py). Dropout feeding the recurrence uses
masks fixed per sequence (`locked_mask`), so the reverse pass recomputes every step bit for bit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nmt.errors import ConfigError
from nmt.models.embeddings import Embeddings, rename_embedding_keys
from nmt.models.encoders import EncoderOutput, length_mask
from nmt.reversible import (AttentionStorage, InformationBuffer, MemoryAccount, MemoryMode,
                            ReversibleRNN, count_memory)
from nmt.reversible.plan import DEFAULT_CHUNK_STEPS
from nmt.reversible.step_kernels import KernelsUnavailable, make_buffer, use_triton

ENCODER_TAG = "encoder"


def locked_mask(batch: int, size: int, probability: float, *, like: Tensor,
                training: bool) -> Optional[Tensor]:
    """A dropout mask (batch, size) drawn once per sequence (None when inactive)."""
    if not training or probability <= 0.0:
        return None
    keep = 1.0 - probability
    return torch.bernoulli(torch.full((batch, size), keep, device=like.device)) / keep


def layer_masks(layers: int, batch: int, hidden: int, probability: float, *, like: Tensor,
                training: bool) -> Optional[Tensor]:
    """Locked dropout masks (layers - 1, batch, hidden) between stacked layers, or None."""
    if layers == 1 or not training or probability <= 0.0:
        return None
    return torch.stack([locked_mask(batch, hidden, probability, like=like, training=True)
                        for _ in range(layers - 1)])


class ReversiblePart(nn.Module):
    """What the reversible encoder and decoder share: a ReversibleRNN `rnn` over `embeddings`
    (Embeddings), `layers` of `hidden` units with locked `dropout`, runs tagged TAG."""

    TAG = ""

    @property
    def embedding(self) -> nn.Embedding:
        """The token table the recurrence looks up (dropout: the run's locked masks)."""
        return self.embeddings.embedding

    @property
    def has_cell(self) -> bool:
        return self.rnn.state_parts == 4

    def run_options(self, tokens: Tensor) -> dict:
        """The options of this part's run over tokens (batch, len) besides inputs, mask, buffer
        (and initial state): embedding, tag and the recurrence's dropout masks, drawn as
        training draws them. Training and the drift check (nmt/reversal_drift.py) both take
        them from here."""
        batch = tokens.shape[0]
        return dict(embedding=self.embedding, tag=self.TAG,
                    input_dropout=locked_mask(batch, self.embedding.embedding_dim, self.dropout,
                                              like=tokens, training=self.training),
                    layer_dropout=layer_masks(self.layers, batch, self.hidden, self.dropout,
                                              like=tokens, training=self.training))


@dataclass
class ReversibleEncoderOutput(EncoderOutput):
    """EncoderOutput plus what a reversible decoder continues from and what the run counted.

    buffer: the batch's information buffer, after the encoder's steps (keeps its words in
    training, head only in inference); memory: the encoder's counted bits (the buffer's heads
    charged as if it had its own); kept_bytes: measured bytes its run kept.
    """

    buffer: Optional[InformationBuffer] = None
    memory: Optional[MemoryAccount] = None
    kept_bytes: dict = field(default_factory=dict)

    def reorder(self, index: Tensor) -> "ReversibleEncoderOutput":
        """Select (or repeat) sentences; the (head-only) buffer is copied with its rows."""
        buffer = self.buffer.clone()
        buffer.reorder(index)
        rows = super().reorder(index)
        return ReversibleEncoderOutput(**{f.name: getattr(rows, f.name)
                                          for f in dataclasses.fields(EncoderOutput)},
                                       buffer=buffer, memory=self.memory,
                                       kept_bytes=self.kept_bytes)


class ReversibleEncoder(ReversiblePart):
    """Embeds the source and runs a reversible stack over it (see the module docstring).

    Args:
        cell: "revgru" or "revlstm"; vocab_size, embedding_dim: source embeddings.
        hidden, layers, max_forget_bits: the ReversibleRNN.
        context: one of emb, slice, proj, emb+slice, emb+proj, hidden.
        size, precision: stored units per step (slice/proj) and their bits (32 or 16).
        dropout: locked dropout on the embeddings, between layers and on the stored values.
        per_step_dropout: the attention context (embeddings and stored values) instead gets
            dropout per position, as a plain encoder's outputs do (the recurrence keeps its masks).
        memory_saving: run reversibly in training (False: plain autograd, storing everything).
        buffer_width: columns of the shared buffer (>= hidden / 2; the decoder's half may be wider).
    """

    TAG = ENCODER_TAG

    def __init__(self, cell: str, vocab_size: int, *, embedding_dim: int, hidden: int,
                 layers: int = 1, max_forget_bits: Optional[int] = 3, context: str = "emb",
                 size: Optional[int] = None, precision: int = 32, dropout: float = 0.0,
                 memory_saving: bool = True, buffer_width: Optional[int] = None,
                 per_step_dropout: bool = True,
                 chunk_steps=DEFAULT_CHUNK_STEPS, chunk_bytes: Optional[int] = None,
                 kernels: str = "auto", fused_activations: bool = False,
                 fused_products: bool = False, readout_steps: Optional[int] = None):
        super().__init__()
        self.part = None if context == "emb" else context.split("+")[-1]
        self.use_embeddings = context.startswith("emb")
        self.embeddings = Embeddings(vocab_size, embedding_dim)
        rename_embedding_keys(self)
        storage = (AttentionStorage(self.part, size, precision=precision)
                   if self.part in ("slice", "proj") else None)
        self.rnn = ReversibleRNN(cell, embedding_dim, hidden, num_layers=layers,
                                 max_forget_bits=max_forget_bits, storage=storage,
                                 chunk_steps=chunk_steps, chunk_bytes=chunk_bytes,
                                 kernels=kernels, fused_activations=fused_activations,
                                 fused_products=fused_products, readout_steps=readout_steps)
        self.context_kind, self.precision, self.dropout = context, precision, dropout
        self.memory_saving = memory_saving and self.part != "hidden"  # hidden: stores every state
        self.per_step_dropout = per_step_dropout
        self.hidden, self.layers = hidden, layers
        self.final_size = hidden
        stored_size = {"slice": size, "proj": size, "hidden": hidden}.get(self.part, 0)
        self.context_size = stored_size + (embedding_dim if self.use_embeddings else 0)
        self.buffer_width = max(buffer_width or 0, self.rnn.half_size)

    def new_buffer(self, batch: int, device) -> InformationBuffer:
        """The batch's shared buffer; it keeps its words only when a backward pass will follow
        (then in the fused kernels' word stack where model.reversible.kernels selects them)."""
        keep = torch.is_grad_enabled()
        try:
            fused = keep and use_triton(self.rnn.kernels, device)
        except KernelsUnavailable as error:
            raise ConfigError(f"model.reversible.kernels: {error}") from error
        return make_buffer((batch, self.buffer_width), device=device, keep_words=keep,
                           fused=fused, activate=self.rnn.fused_activations,
                           products=self.rnn.fused_products)

    def forward(self, src: Tensor, src_lengths: Tensor, *,
                mode: Optional[MemoryMode] = None) -> ReversibleEncoderOutput:
        """src (batch, src_len) long, src_lengths (batch,) -> ReversibleEncoderOutput.

        mode: MemoryMode.REVERSIBLE (default when memory_saving) or REFERENCE (plain autograd,
        e.g. a reference twin in tests); without gradients always the plain steps."""
        if bool((src_lengths < 1).any()):
            raise ValueError("every source sentence needs at least one token (e.g. EOS)")
        batch, src_len = src.shape
        mask = length_mask(src_lengths, src_len)
        options = self.run_options(src)
        buffer = self.new_buffer(batch, src.device)
        if mode is None:
            mode = MemoryMode.REVERSIBLE if self.memory_saving else MemoryMode.REFERENCE
        if self.part == "hidden" or not torch.is_grad_enabled():
            mode = MemoryMode.REFERENCE
        run = self.rnn(src, mask, mode=mode, buffer=buffer, outputs=self.part == "hidden",
                       **options)
        stored = run.stored
        if self.part == "hidden":
            stored = run.outputs
            if self.precision == 16:  # as the plain model's 16-bit context (gradient straight through)
                stored = stored + (stored.detach().half().float() - stored.detach())
        pieces = []
        if self.use_embeddings:
            pieces.append(self._context_dropout(self.embedding(src), options["input_dropout"]))
        if stored is not None:
            stored_mask = None if self.per_step_dropout else locked_mask(
                batch, stored.shape[-1], self.dropout, like=src, training=self.training)
            pieces.append(self._context_dropout(stored, stored_mask))
        context = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        final_hidden, final_cell = run.final if self.has_cell else (run.final, None)
        memory = count_memory(self.rnn, mask, buffer, tag=ENCODER_TAG)
        if not self.memory_saving:  # everything stored: nothing saved
            memory = memory.stores_everything()
        return ReversibleEncoderOutput(
            context=context, mask=mask, lengths=src_lengths, final_hidden=final_hidden,
            final_cell=final_cell, buffer=buffer, memory=memory, kept_bytes=dict(run.kept_bytes))

    def _context_dropout(self, values: Tensor, sequence_mask: Optional[Tensor]) -> Tensor:
        """values (batch, src_len, size): per-position dropout, or the sentence's mask."""
        if self.per_step_dropout:
            return context_dropout(values, self.dropout, training=self.training)
        return values if sequence_mask is None else values * sequence_mask.unsqueeze(1)


def context_dropout(values: Tensor, probability: float, *, training: bool) -> Tensor:
    """F.dropout(values, probability, training), keeping no mask for backward on a CPU.

    There F.dropout multiplies by a float noise tensor (bernoulli / keep) that autograd keeps
    until backward: 4 bytes per value of the whole attention context, held from the encoder's
    forward until the decoder's backward is done. `_RedrawnDropout` keeps the generator's state
    instead and draws the same noise again in backward (same calls, same state), so values and
    gradients are bit for bit F.dropout's and the generator ends where F.dropout leaves it.
    Elsewhere (CUDA: F.dropout's fused kernel keeps a 1-byte mask) F.dropout itself."""
    if (not training or probability <= 0.0 or probability >= 1.0 or values.device.type != "cpu"
            or not values.requires_grad):
        return F.dropout(values, probability, training=training)
    return _RedrawnDropout.apply(values, probability)


def _noise(like: Tensor, probability: float) -> Tensor:
    """F.dropout's noise on a CPU: bernoulli(keep) / keep, drawn from the default generator."""
    noise = torch.empty_like(like).bernoulli_(1 - probability)
    return noise.div_(1 - probability)


class _RedrawnDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, probability):
        ctx.rng_state, ctx.probability = torch.get_rng_state(), probability
        return values * _noise(values, probability)

    @staticmethod
    def backward(ctx, grad):
        with torch.random.fork_rng(devices=[]):  # the caller's generator state is kept
            torch.set_rng_state(ctx.rng_state)
            noise = _noise(grad, ctx.probability)
        return noise.mul_(grad), None

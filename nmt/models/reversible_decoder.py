"""Reversible (RevGRU/RevLSTM) decoder: Luong attention without input feeding, loss per step.

Per step t (MacKay et al. 2018; docs/design.md): h_t = RevCell(emb(y_{t-1}), h_{t-1});
c_t = attention(h_t, encoder context); a_t = tanh(W_c [c_t; h_t]); log p = log_softmax(W_o a_t).

Training runs the recurrence through `ReversibleRNN` with a readout (`StepLoss`) over chunks of
steps: in reversible mode the forward pass runs only the recurrence; while a chunk is reversed in
backward, the readout computes attention, logits and the label-smoothed loss of its steps, once,
with gradients, which join the gradients of their h_t. So the loss (and NLL) of a training batch
is known once its backward is done. No (batch, tgt_len, vocab) tensor exists beyond one chunk's. Gradients reaching the attention
keys and values flow on, through ordinary autograd, into the encoder's stored values and its
reversible backward.

The decoder continues the encoder's information buffer (one per batch). Memory accounting
(returned with the loss, nmt/models/memory.py; complete, nmt/reversible/accounting.py): each
side's normal bits are 32 x H x real steps x layers (x2 for RevLSTM); its used bits are the
buffer's int32 heads (charged to each side as if it had its own; the model's total charges them
once), the 16-bit words it pushed, its stored attention values and the exact states it keeps for
backward (final state at its kept width, the initial state's fingerprint).

Inference runs the same fixed-point steps without gradient on a head-only buffer
(`keep_words=False`): the same numbers as training, bit for bit, in O(batch x H) memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from nmt.models.attention import LuongAttention, score_bias
from nmt.models.embeddings import PAD_ID, Embeddings, rename_embedding_keys, tie_output
from nmt.models.loss import label_smoothed_nll_from_logits
from nmt.models.memory import ModelMemory
from nmt.models.reversible_encoder import ReversibleEncoderOutput, ReversiblePart, locked_mask
from nmt.reversible import InformationBuffer, MemoryMode, ReversibleRNN, count_memory
from nmt.reversible.plan import DEFAULT_CHUNK_STEPS
from nmt.reversible.readout import PendingTotal, sink_linear
from nmt.reversible.step_kernels import is_stack_buffer

DECODER_TAG = "decoder"


class DecoderLoss(NamedTuple):
    """loss, nll: summed over the target tokens (placeholders until backward when `pending` is
    set: the reversible run computes them while backward reverses it); memory: both sides'
    counts (training batches; empty otherwise)."""

    loss: Tensor
    nll: Tensor
    memory: ModelMemory
    pending: Optional[PendingTotal] = None


@dataclass
class ReversibleDecoderState:
    """Exact fixed-point state per layer and the head-only buffer it continues (decoding)."""

    state: List[Tuple[Tensor, ...]]
    buffer: InformationBuffer
    attention: Optional[Tensor] = None  # (batch, src_len) weights of the last step

    def reorder(self, index: Tensor) -> "ReversibleDecoderState":
        buffer = self.buffer.clone()
        buffer.reorder(index)
        return ReversibleDecoderState(
            state=[tuple(part.index_select(0, index) for part in layer) for layer in self.state],
            buffer=buffer,
            attention=None if self.attention is None else self.attention.index_select(0, index))


class Readout(nn.Module):
    """h_t (batch, H) -> attentional vector a_t = tanh(W_c [attention(h_t); h_t]) and logits."""

    def __init__(self, hidden: int, context_size: int, vocab_size: int):
        super().__init__()
        self.attention = LuongAttention(hidden, context_size)
        self.combine = nn.Linear(context_size + hidden, hidden, bias=False)
        self.output = nn.Linear(hidden, vocab_size)

    def attentional(self, h: Tensor, keys: Tensor, values: Tensor, src_mask: Tensor,
                    dropout: Optional[Tensor] = None, *, score_bias: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Tensor]:
        """h (batch, H), or (batch, C, H) for C steps -> a_t of the same shape and the attention
        weights (batch[, C], src_len). dropout: a (batch, H) mask, the same for every step, or
        (batch, C, H), one per step. score_bias: attention.score_bias(src_mask), if made."""
        queries = h if h.dim() == 3 else h.unsqueeze(1)
        context, weights = self.attention(queries, keys, values, mask=src_mask, bias=score_bias)
        combined = torch.cat([context, queries], dim=-1)
        # one 2-D product, as self.combine(combined) runs it; in reversible backward its weight
        # gradient is added into a running total in blocks (nmt.reversible.readout.sink_linear)
        combined = sink_linear(combined.reshape(-1, combined.shape[-1]), self.combine)
        attentional = torch.tanh(combined.view(*queries.shape[:-1], -1))
        if dropout is not None:
            attentional = attentional * (dropout.unsqueeze(1) if dropout.dim() == 2 else dropout)
        if h.dim() == 2:
            return attentional.squeeze(1), weights.squeeze(1)
        return attentional, weights


class StepDropout:
    """Dropout masks for a_t drawn per step (as a plain decoder's), yet the same whichever order
    the steps are read in (in forward by plain autograd, chunk by chunk in backward by the
    reversible run): step t's mask comes from a generator seeded with the batch's seed + t.
    fused: the masks of a block of steps come from one Triton launch instead (counter-based
    randomness keyed by seed, t, row and unit; nmt/models/triton_loss.py), other bits."""

    def __init__(self, probability: float, batch: int, size: int, device: torch.device, *,
                 fused: bool = False):
        self.keep, self.shape, self.device = 1.0 - probability, (batch, size), device
        self.seed = int(torch.randint(0, 2**62, ()))  # from the global generator: reproducible
        self.fused = fused

    def masks(self, start: int, steps: int) -> Tensor:
        """(batch, steps, size) masks of steps start .. start + steps - 1."""
        if self.fused:
            from nmt.models.triton_loss import step_masks

            return step_masks(self.seed, start, steps, *self.shape, self.keep, self.device)
        masks = torch.empty(self.shape[0], steps, self.shape[1], device=self.device)
        for i in range(steps):
            generator = torch.Generator(device=self.device)
            generator.manual_seed(self.seed + start + i)
            masks[:, i].bernoulli_(self.keep, generator=generator)
        return masks / self.keep


class StepLoss(nn.Module):
    """The readout of one batch: label-smoothed loss of a chunk of steps, summed over their real
    tokens (padding rows skip the output layer, except with `fused`). Also sums the plain NLL on
    the side.

    Built per batch (holds that batch's targets and masks); its parameters are the readout's.
    Reads whole chunks (`reads_chunks`): attention, combine and output layer of C steps are one
    batched product each, as in the plain decoder. fused (the run takes the Triton kernels): the
    loss in one Triton kernel (label_smoothed_nll_from_logits(fused=True)) over every row, which
    zeroes padding rows itself: selecting the real rows would cost a host sync per block.
    """

    reads_chunks = True

    def __init__(self, readout: Readout, tgt_out: Tensor, src_mask: Tensor, *,
                 label_smoothing: float, dropout: Union[Tensor, StepDropout, None],
                 fused: bool = False):
        super().__init__()
        self.readout, self.fused = readout, fused
        self.tgt_out, self.src_mask, self.dropout = tgt_out, src_mask, dropout
        self.score_bias = score_bias(src_mask)  # once per batch, not per readout block
        self.label_smoothing = label_smoothing
        self._nll = {}  # first step of a chunk -> NLL of its tokens; summed in step order
        # their sum, updated in place: in training it is complete once backward has read every chunk
        self.nll = torch.full((), float("nan"), device=tgt_out.device)

    @property
    def row_bytes(self) -> int:
        """Estimated bytes the readout of one step holds per batch row (chunk_steps "auto"):
        the log-probs over the vocabulary (the fused loss keeps one (tokens, vocab) tensor),
        attention scores and weights over the source, and a few H/context-wide vectors."""
        output, combine = self.readout.output, self.readout.combine
        return 4 * (output.out_features + 2 * self.src_mask.shape[1]
                    + 4 * combine.in_features + 2 * output.in_features)

    def forward(self, h: Tensor, start: int, keys: Tensor, values: Tensor) -> Tensor:
        """h (batch, C, H): the top states of steps start .. start + C - 1 -> summed loss."""
        targets = self.tgt_out[:, start: start + h.shape[1]]
        dropout = self.dropout
        if isinstance(dropout, StepDropout):
            dropout = dropout.masks(start, h.shape[1])
        attentional, _ = self.readout.attentional(h, keys, values, self.src_mask, dropout,
                                                  score_bias=self.score_bias)
        if self.fused:  # every row: the kernel gives PAD rows no loss and no gradient, and no
            # row selection means no host sync and no index / index_put pair
            attentional = attentional.reshape(-1, attentional.shape[-1])
        else:  # the real rows only
            real = targets != PAD_ID
            attentional, targets = attentional[real], targets[real]
        # (rows, vocab): this chunk only; in reversible backward the output layer's weight
        # gradient is added into one running total in blocks (nmt.reversible.readout.sink_linear)
        logits = sink_linear(attentional, self.readout.output)
        loss, nll = label_smoothed_nll_from_logits(logits, targets,
                                                   smoothing=self.label_smoothing, consume=True,
                                                   fused=self.fused)
        self._nll[start] = nll.detach()
        torch.sum(torch.stack([self._nll[t] for t in sorted(self._nll)]), 0, out=self.nll)
        return loss


class ReversibleDecoder(ReversiblePart):
    """Attentional reversible decoder (see the module docstring).

    Args:
        cell: "revgru" or "revlstm"; vocab_size, embedding_dim: target embeddings.
        hidden, layers, max_forget_bits: the ReversibleRNN.
        context_size: width of the encoder's attention values.
        bridge: maps the encoder's final float state to the initial state (decoders.Bridge).
        dropout: locked dropout on the embeddings and between layers; output_dropout: locked
            dropout on a_t, or per step with per_step_dropout. tie_embeddings: output layer
            shares the embedding matrix.

    `fused_readout` (attribute, default True): where the run takes the Triton kernels, the loss
    and per-step output dropout masks of each readout block run as Triton kernels too
    (nmt/models/triton_loss.py: losses to float rounding, other mask bits than the tensor
    path's); False keeps the torch readout (tests of the recurrence's exactness).
    """

    fused_readout = True

    TAG = DECODER_TAG

    def __init__(self, cell: str, vocab_size: int, *, embedding_dim: int, hidden: int,
                 layers: int = 1, max_forget_bits: Optional[int] = 3, context_size: int,
                 bridge: nn.Module, dropout: float = 0.0, output_dropout: float = 0.0,
                 per_step_dropout: bool = True, tie_embeddings: bool = False,
                 chunk_steps=DEFAULT_CHUNK_STEPS, chunk_bytes: Optional[int] = None,
                 kernels: str = "auto", fused_activations: bool = False,
                 fused_products: bool = False, readout_steps: Optional[int] = None):
        super().__init__()
        # a tied PAD row is also the output layer's: it keeps its init (see Embeddings)
        self.embeddings = Embeddings(vocab_size, embedding_dim, zero_padding=not tie_embeddings)
        rename_embedding_keys(self)
        self.rnn = ReversibleRNN(cell, embedding_dim, hidden, num_layers=layers,
                                 max_forget_bits=max_forget_bits,
                                 chunk_steps=chunk_steps, chunk_bytes=chunk_bytes,
                                 kernels=kernels, fused_activations=fused_activations,
                                 fused_products=fused_products, readout_steps=readout_steps)
        self.readout = Readout(hidden, context_size, vocab_size)
        if tie_embeddings:
            tie_output(self.readout.output, self.embeddings)
        self.bridge = bridge
        self.hidden, self.layers = hidden, layers
        self.dropout, self.output_dropout = dropout, output_dropout
        self.per_step_dropout = per_step_dropout

    def attach(self, encoder_output: ReversibleEncoderOutput) -> ReversibleEncoderOutput:
        """Attention keys W_a v_s, computed once per sentence."""
        return encoder_output.with_keys(self.readout.attention.project_keys(encoder_output.context))

    def initial_state(self, encoder_output: ReversibleEncoderOutput):
        """The float initial state (layers, batch, H) (or (h, c)) from the encoder's final one."""
        return self.initial_state_from(encoder_output.final_hidden, encoder_output.final_cell)

    def initial_state_from(self, final_hidden: Tensor, final_cell: Optional[Tensor]):
        hidden, cell = self.bridge(final_hidden, final_cell)
        return (hidden, cell) if self.has_cell else hidden

    # -- decoding -------------------------------------------------------------------------------

    def init_state(self, encoder_output: ReversibleEncoderOutput) -> ReversibleDecoderState:
        initial = self.initial_state(encoder_output)
        batch = encoder_output.mask.shape[0]
        buffer = encoder_output.buffer.clone()
        if buffer.keep_words:  # decoding never reverses: keep the head only
            buffer = _head_only(buffer)
        return ReversibleDecoderState(
            state=self.rnn.exact_state(initial, batch, encoder_output.mask.device), buffer=buffer)

    def step(self, prev_tokens: Tensor, state: ReversibleDecoderState,
             encoder_output: ReversibleEncoderOutput) -> Tuple[Tensor, ReversibleDecoderState]:
        """prev_tokens (batch,) -> log_probs (batch, vocab) float32, next state."""
        buffer = state.buffer.clone()
        exact, top, _ = self.rnn.inference_step(self.embedding(prev_tokens), state.state, buffer,
                                                tag=DECODER_TAG)
        attentional, weights = self.readout.attentional(top, encoder_output.keys,
                                                        encoder_output.context, encoder_output.mask)
        log_probs = torch.log_softmax(self.readout.output(attentional).float(), dim=-1)
        return log_probs, ReversibleDecoderState(state=exact, buffer=buffer, attention=weights)

    # -- training -------------------------------------------------------------------------------

    def training_loss(self, tgt_in: Tensor, tgt_out: Tensor,
                      encoder_output: ReversibleEncoderOutput, *, label_smoothing: float = 0.0,
                      mode: Optional[MemoryMode] = None) -> DecoderLoss:
        """-> DecoderLoss: label-smoothed loss and nll summed over the non-padding tokens of
        tgt_out, and the counted memory of both sides (training batches).

        mode: REVERSIBLE (default) or REFERENCE (plain autograd). In reversible training the
        loss and nll are computed while backward reverses the run (`pending`)."""
        batch = tgt_in.shape[0]
        tgt_mask = tgt_out != PAD_ID
        options = self.run_options(tgt_in)
        # the run takes the Triton kernels when its (the encoder's) buffer is a word stack
        fused = self.fused_readout and is_stack_buffer(encoder_output.buffer)
        if self.per_step_dropout and self.training and self.output_dropout > 0:
            output_mask = StepDropout(self.output_dropout, batch, self.hidden, tgt_in.device,
                                      fused=fused)
        else:
            output_mask = locked_mask(batch, self.hidden, self.output_dropout, like=tgt_in,
                                      training=self.training)
        step_loss = StepLoss(self.readout, tgt_out, encoder_output.mask,
                             label_smoothing=label_smoothing, dropout=output_mask, fused=fused)
        buffer = encoder_output.buffer
        if mode is None or not (torch.is_grad_enabled() and buffer.keep_words):
            mode = (MemoryMode.REVERSIBLE if torch.is_grad_enabled() and buffer.keep_words
                    else MemoryMode.REFERENCE)
        if mode is MemoryMode.REFERENCE and buffer.keep_words:
            buffer = buffer.clone()  # plain autograd leaves its words: keep the encoder's stack
        run = self.rnn(tgt_in, tgt_mask, mode=mode,
                       initial_state=self.initial_state(encoder_output), buffer=buffer,
                       readout=step_loss,
                       readout_extras=(encoder_output.keys, encoder_output.context), **options)
        memory = ModelMemory()
        if torch.is_grad_enabled():  # training batches only (not validation)
            decoder = count_memory(self.rnn, tgt_mask, run.buffer, tag=DECODER_TAG,
                                   charge_head=True)
            memory = ModelMemory.of(encoder=encoder_output.memory, decoder=decoder,
                                    kept_bytes={"encoder": dict(encoder_output.kept_bytes or {}),
                                                "decoder": dict(run.kept_bytes or {})})
        return DecoderLoss(run.readout, step_loss.nll, memory, run.pending)


def _head_only(buffer: InformationBuffer) -> InformationBuffer:
    """A copy of the buffer's heads that drops words (decoding from a training-mode buffer)."""
    head_only = InformationBuffer(buffer.shape, device=buffer.head.device, keep_words=False,
                                  word_bits=buffer.word_bits, forget_radix=buffer.forget_radix)
    head_only.head = buffer.head.clone()
    return head_only

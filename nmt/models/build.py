"""`build_model(cfg.model, src_vocab_size, tgt_vocab_size)`: a Seq2Seq from the model config.

Encoders and decoders are looked up by cell name in two small registries, so other cell types
(the reversible RevGRU/RevLSTM) register a builder and drop in without touching this file:

    @register_encoder("revgru")
    def build_revgru_encoder(model_cfg, *, src_vocab_size): ... -> encoder

A decoder builder receives the built encoder (for its context and final-state sizes):
    builder(model_cfg, *, tgt_vocab_size, encoder) -> decoder
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

from nmt.config import check_model_rules
from nmt.errors import ConfigError
from nmt.models.context import AttentionContext
from nmt.models.decoders import Bridge, RNNDecoder
from nmt.models.embeddings import Embeddings
from nmt.models.encoders import RNNEncoder
from nmt.models.seq2seq import Seq2Seq

ENCODER_BUILDERS: Dict[str, Callable] = {}
DECODER_BUILDERS: Dict[str, Callable] = {}


def register_encoder(cell: str):
    def register(builder: Callable) -> Callable:
        ENCODER_BUILDERS[cell] = builder
        return builder
    return register


def register_decoder(cell: str):
    def register(builder: Callable) -> Callable:
        DECODER_BUILDERS[cell] = builder
        return builder
    return register


@register_encoder("gru")
@register_encoder("lstm")
def build_rnn_encoder(model_cfg, *, src_vocab_size: int) -> RNNEncoder:
    enc = model_cfg.encoder
    directions = 2 if enc.bidirectional else 1
    context = AttentionContext(
        model_cfg.attention.context, model_cfg.attention.size,
        precision=model_cfg.attention.precision, embedding_dim=model_cfg.embedding_dim,
        hidden_size=enc.hidden * directions)
    embeddings = Embeddings(src_vocab_size, model_cfg.embedding_dim, dropout=model_cfg.dropout)
    return RNNEncoder(enc.cell, embeddings, hidden=enc.hidden, layers=enc.layers,
                      bidirectional=enc.bidirectional, dropout=enc.dropout, context=context)


@register_decoder("gru")
@register_decoder("lstm")
def build_rnn_decoder(model_cfg, *, tgt_vocab_size: int, encoder) -> RNNDecoder:
    dec, enc = model_cfg.decoder, model_cfg.encoder
    bridge = Bridge(
        encoder_layers=enc.layers, encoder_size=encoder.final_size,
        encoder_has_cell=enc.cell in ("lstm", "revlstm"),
        decoder_layers=dec.layers, decoder_size=dec.hidden, decoder_has_cell=dec.cell == "lstm",
        identity=(not enc.bidirectional and enc.hidden == dec.hidden
                  and enc.layers == dec.layers))
    embeddings = Embeddings(tgt_vocab_size, model_cfg.embedding_dim, dropout=model_cfg.dropout)
    return RNNDecoder(dec.cell, embeddings, hidden=dec.hidden, layers=dec.layers,
                      input_feeding=dec.input_feeding, dropout=dec.dropout,
                      output_dropout=model_cfg.dropout, context_size=encoder.context_size,
                      bridge=bridge, tie_embeddings=model_cfg.tie_embeddings)


def _builder(registry: Dict[str, Callable], cell: str, key: str) -> Callable:
    if cell not in registry:
        raise ConfigError(f"{key}: cell {cell!r} is not available in this build "
                          f"(available: {', '.join(sorted(registry))})")
    return registry[cell]


def init_parameters(model: nn.Module, init_uniform) -> None:
    """uniform(-x, x) for every parameter (None keeps PyTorch's defaults); padding rows stay 0."""
    if init_uniform is None:
        return
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-init_uniform, init_uniform)
    for module in model.modules():
        if isinstance(module, Embeddings):
            module.reset_padding()


def build_model(model_cfg, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    """model_cfg: the `model` section (nmt.config.ModelConfig or anything with its attributes)."""
    check_model_rules(model_cfg)
    encoder = _builder(ENCODER_BUILDERS, model_cfg.encoder.cell, "model.encoder.cell")(
        model_cfg, src_vocab_size=src_vocab_size)
    decoder = _builder(DECODER_BUILDERS, model_cfg.decoder.cell, "model.decoder.cell")(
        model_cfg, tgt_vocab_size=tgt_vocab_size, encoder=encoder)
    model = Seq2Seq(encoder, decoder)
    init_parameters(model, model_cfg.init_uniform)
    return model

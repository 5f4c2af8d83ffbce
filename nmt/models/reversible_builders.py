"""Registers the reversible encoder and decoder (cells revgru, revlstm) with build_model."""
from __future__ import annotations

from nmt.config import REVERSIBLE_CELLS, ReversibleConfig, chunk_setting
from nmt.errors import ConfigError
from nmt.models.build import register_decoder, register_encoder
from nmt.models.decoders import Bridge
from nmt.models.reversible_decoder import ReversibleDecoder
from nmt.models.reversible_encoder import ReversibleEncoder


@register_encoder("revgru")
@register_encoder("revlstm")
def build_reversible_encoder(model_cfg, *, src_vocab_size: int) -> ReversibleEncoder:
    enc, dec, attention = model_cfg.encoder, model_cfg.decoder, model_cfg.attention
    if enc.bidirectional:
        raise ConfigError(f"model.encoder.bidirectional: not available for a reversible encoder "
                          f"({enc.cell}); set it to false")
    shares_buffer = dec.cell in REVERSIBLE_CELLS
    return ReversibleEncoder(
        enc.cell, src_vocab_size, embedding_dim=model_cfg.embedding_dim, hidden=enc.hidden,
        layers=enc.layers, max_forget_bits=enc.max_forget_bits, context=attention.context,
        size=attention.size, precision=attention.precision, dropout=enc.dropout,
        memory_saving=getattr(enc, "memory_saving", True),
        per_step_dropout=model_cfg.readout_dropout == "step",
        buffer_width=(dec.hidden + 1) // 2 if shares_buffer else None,
        **_chunking(model_cfg))


@register_decoder("revgru")
@register_decoder("revlstm")
def build_reversible_decoder(model_cfg, *, tgt_vocab_size: int, encoder) -> ReversibleDecoder:
    dec, enc = model_cfg.decoder, model_cfg.encoder
    if not isinstance(encoder, ReversibleEncoder):
        raise ConfigError(f"model.decoder.cell: a reversible decoder ({dec.cell}) continues the "
                          f"reversible encoder's buffer; model.encoder.cell must be one of "
                          f"{', '.join(REVERSIBLE_CELLS)}, not {enc.cell!r}")
    # input feeding, tied sizes: config.py's rules (validated when the config is read)
    bridge = Bridge(
        encoder_layers=enc.layers, encoder_size=encoder.final_size,
        encoder_has_cell=encoder.has_cell, decoder_layers=dec.layers, decoder_size=dec.hidden,
        decoder_has_cell=dec.cell == "revlstm",
        identity=enc.hidden == dec.hidden and enc.layers == dec.layers)
    return ReversibleDecoder(
        dec.cell, tgt_vocab_size, embedding_dim=model_cfg.embedding_dim, hidden=dec.hidden,
        layers=dec.layers, max_forget_bits=dec.max_forget_bits, context_size=encoder.context_size,
        bridge=bridge, dropout=dec.dropout, output_dropout=model_cfg.dropout,
        per_step_dropout=model_cfg.readout_dropout == "step",
        tie_embeddings=model_cfg.tie_embeddings, **_chunking(model_cfg))


def _chunking(model_cfg) -> dict:
    """model.reversible -> the ReversibleRNN's chunk_steps / chunk_bytes / kernels keywords."""
    reversible = getattr(model_cfg, "reversible", None) or ReversibleConfig()
    steps, budget = chunk_setting(reversible)
    return {"chunk_steps": steps, "chunk_bytes": budget, "kernels": reversible.kernels,
            "fused_activations": bool(reversible.fused_activations),
            "fused_products": bool(reversible.fused_products),
            "readout_steps": reversible.readout_steps}

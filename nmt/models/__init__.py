"""Translation models: embeddings, attention, GRU/LSTM encoders and decoders, Seq2Seq, build_model."""
from nmt.models.build import build_model, register_decoder, register_encoder
from nmt.models import reversible_builders  # noqa: F401 - registers revgru/revlstm
from nmt.models.decoders import DecoderState
from nmt.models.encoders import EncoderOutput
from nmt.models.seq2seq import LossOutput, Seq2Seq

__all__ = ["build_model", "register_encoder", "register_decoder", "Seq2Seq", "LossOutput",
           "EncoderOutput", "DecoderState"]

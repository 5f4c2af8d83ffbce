"""YAML run configuration -> typed dataclasses, validated so that a bad key fails in one line.

`load_config(path)` reads a file, `config_from_dict(d)` rebuilds a config stored in a checkpoint,
`Config.to_dict()` goes back. Every error is a `ConfigError` whose message starts with the
dotted key (or the file name) and says what is allowed; configs/reference.yaml documents the keys.
Relative paths (`run_dir`, `data.dir`) are relative to the current working directory.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import yaml

from nmt.errors import ConfigError
from nmt.reversible.fixed_point import MAX_FORGET_CHOICES
from nmt.reversible.step_kernels import KERNEL_CHOICES
from nmt.typed_yaml import expand_env  # noqa: F401 - part of this module's API
from nmt.typed_yaml import choices, parse_dataclass, read_yaml_mapping, type_name

PLAIN_CELLS = ("gru", "lstm")
REVERSIBLE_CELLS = ("revgru", "revlstm")
CELLS = PLAIN_CELLS + REVERSIBLE_CELLS
ATTENTION_CONTEXTS = ("hidden", "emb", "slice", "proj", "emb+slice", "emb+proj")


@dataclass
class TokenizerConfig:
    joint: bool = True
    vocab_size: int = 8000
    model_type: str = field(default="unigram", metadata=choices("unigram", "bpe", "char", "word"))
    character_coverage: float = 1.0
    byte_fallback: bool = True
    input_sentence_size: int = 2_000_000  # sentences sampled for training sentencepiece


@dataclass
class DataConfig:
    dir: str = "data/multi30k"
    src: str = "en"
    tgt: str = "de"
    train: str = "train"
    valid: str = "val"
    test: str = "test_2016_flickr"
    max_len: int = 100
    batch_tokens: int = 2048
    eval_batch_size: int = 64
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class EncoderConfig:
    cell: str = field(default="gru", metadata=choices(*CELLS))
    layers: int = 1
    hidden: int = 300
    bidirectional: bool = False
    dropout: float = 0.3
    max_forget_bits: Optional[int] = field(default=3, metadata=choices(*MAX_FORGET_CHOICES))
    # false: a reversible encoder stores every state (plain autograd), as the paper's 300H row does
    memory_saving: bool = True


@dataclass
class DecoderConfig:
    cell: str = field(default="gru", metadata=choices(*CELLS))
    layers: int = 1
    hidden: int = 300
    input_feeding: bool = False
    dropout: float = 0.3
    max_forget_bits: Optional[int] = field(default=3, metadata=choices(*MAX_FORGET_CHOICES))


@dataclass
class AttentionConfig:
    context: str = field(default="hidden", metadata=choices(*ATTENTION_CONTEXTS))
    size: Optional[int] = None
    precision: int = field(default=32, metadata=choices(32, 16))


@dataclass
class ReversibleConfig:
    # steps per chunk of a reversible run: the backward's working set (a chunk's tape and the
    # decoder's readout of its steps) grows with it. An integer, or "auto": the largest chunk
    # whose estimated tape + readout fits chunk_mib (nmt.reversible.plan.auto_chunk_steps)
    chunk_steps: str = "4"
    chunk_mib: Optional[float] = None
    # each step's element-wise part: torch (tensor ops), triton (fused kernels: CUDA, or a CPU
    # under TRITON_INTERPRET=1), auto (triton on CUDA when importable, else torch)
    kernels: str = field(default="auto", metadata=choices(*KERNEL_CHOICES))
    fused_activations: bool = False  # triton: the kernels apply sigmoid/tanh too (fewer launches)
    # triton: the kernels also compute the recurrent (hidden-side) matrix products, so each
    # half-step and direction is one launch (implies fused_activations)
    fused_products: bool = False
    # the decoder's readout (attention, output layer, loss) is evaluated this many steps at a
    # time (null: a whole chunk): bounds its memory while longer chunks launch fewer kernels
    readout_steps: Optional[int] = None


@dataclass
class ModelConfig:
    embedding_dim: int = 300
    tie_embeddings: bool = False
    dropout: float = 0.3
    # reversible models: dropout on the attention context and on a_t drawn per position and step
    # as plain models do ("step"), or once per sentence ("sequence", like the recurrence's own
    # masks: the earlier default, which regularises the readout less)
    readout_dropout: str = field(default="step", metadata=choices("step", "sequence"))
    init_uniform: Optional[float] = 0.1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    reversible: ReversibleConfig = field(default_factory=ReversibleConfig)


@dataclass
class LRScheduleConfig:
    type: str = field(default="plateau", metadata=choices("plateau", "constant"))
    factor: float = 0.5
    patience: int = 2
    metric: str = field(default="loss", metadata=choices("loss", "bleu"))
    min_lr: float = 1.0e-5
    warmup_steps: int = 0


@dataclass
class TrainConfig:
    seed: int = 1
    device: str = "auto"
    optimizer: str = field(default="adam", metadata=choices("adam", "sgd"))
    lr: float = 0.001
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_grad_norm: Optional[float] = 5.0
    label_smoothing: float = 0.1
    accumulate: int = 1  # batches whose gradients are summed into one update
    max_epochs: int = 30
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    valid_every: int = 500
    valid_examples: int = 3  # validation sentences whose translation is logged at each validation
    log_every: int = 50
    keep_last: int = 3
    early_stopping_patience: Optional[int] = 8
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    verify_reversal_every: int = 0
    nonfinite_patience: int = 5  # NaN/inf batches in a row skipped before training stops


@dataclass
class DecodeConfig:
    beam_size: int = 5
    length_penalty: float = 1.0
    max_len_ratio: float = 1.5
    max_len_offset: int = 10
    nbest: int = 1
    batch_size: int = 64


@dataclass
class Config:
    name: str = "run"
    run_dir: str = ""  # empty: runs/{name}
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (YAML- and checkpoint-safe); `config_from_dict` inverts it."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def load_config(path, overrides: Sequence[str] = ()) -> Config:
    """Read, expand `${VAR}`/`${VAR:-default}`, apply `KEY=VALUE` overrides (dotted keys, YAML
    values, e.g. `train.lr=5e-4`), parse and validate a YAML config file."""
    data, lines = read_yaml_mapping(
        path, what="a mapping of sections (name, run_dir, data, model, train, decode)")
    overridden = apply_overrides(data, overrides)
    try:
        return config_from_dict(data)
    except ConfigError as error:
        key = str(error).split(":", 1)[0]
        line = lines.get(key)
        # the key itself was set, or a --set created the section the error is about
        from_set = [k for k in overridden if k == key or (not line and k.startswith(key + "."))]
        where = f"--set {from_set[-1]}" if from_set else (
            f"{path} line {line}" if line else str(path))
        raise ConfigError(f"{error} ({where})") from None


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> List[str]:
    """Sets each `dotted.key=value` (value parsed as YAML: numbers, true/false, null, text) in the
    nested mapping `data`, creating sections it lacks; returns the keys set. Unknown keys and bad
    values are left for parsing to reject, naming the key."""
    keys = []
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE with a dotted key, "
                              f"e.g. train.lr=0.0005")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        section = data
        for depth, part in enumerate(parts[:-1]):
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a section")
        section[parts[-1]] = value
        keys.append(key)
    return keys


def config_from_dict(data: Dict[str, Any]) -> Config:
    """Build and validate a `Config` from a nested dict (as `Config.to_dict()` or YAML gives)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {type_name(data)}")
    config = parse_dataclass(Config, data)
    if not config.run_dir:
        config.run_dir = f"runs/{config.name}"
    validate(config)
    return config


# --------------------------------------------------------------------------- validation


def validate(config: Config) -> None:
    """Reject impossible values and combinations; raises ConfigError naming the key."""
    _check_text(config.name, "name")
    if re.search(r"[/\\\s]", config.name):
        raise ConfigError(f"name: {config.name!r} must be a single word without slashes or spaces")
    _check_text(config.run_dir, "run_dir")
    _validate_data(config.data)
    _validate_model(config.model)
    _validate_train(config.train)
    _validate_decode(config.decode)


def _validate_data(data: DataConfig) -> None:
    for key in ("dir", "src", "tgt", "train", "valid", "test"):
        _check_text(getattr(data, key), f"data.{key}")
    _at_least(data.max_len, 1, "data.max_len")
    _at_least(data.batch_tokens, 1, "data.batch_tokens")
    _at_least(data.eval_batch_size, 1, "data.eval_batch_size")
    tokenizer = data.tokenizer
    _at_least(tokenizer.vocab_size, 8, "data.tokenizer.vocab_size")
    if tokenizer.input_sentence_size < 0 or 0 < tokenizer.input_sentence_size <= 100:
        raise ConfigError("data.tokenizer.input_sentence_size: must be 0 (use every sentence) or "
                          f"more than 100 (sentencepiece's minimum), got {tokenizer.input_sentence_size}")
    if not 0.0 < tokenizer.character_coverage <= 1.0:
        raise ConfigError("data.tokenizer.character_coverage: must be in (0, 1], "
                          f"got {tokenizer.character_coverage}")


def check_model_rules(model) -> None:
    """The rules across model sections, in one home: checked when a config is read and again by
    build_model (for model configs made in code, e.g. with dataclasses.replace)."""
    encoder, decoder, attention = model.encoder, model.decoder, model.attention
    if decoder.input_feeding and decoder.cell in REVERSIBLE_CELLS:
        raise ConfigError(f"model.decoder.input_feeding: not possible with a reversible decoder "
                          f"({decoder.cell}): the input would depend on the state it must restore")
    if model.tie_embeddings and decoder.hidden != model.embedding_dim:
        raise ConfigError(f"model.tie_embeddings: needs model.decoder.hidden ({decoder.hidden}) "
                          f"== model.embedding_dim ({model.embedding_dim})")
    if (attention.context == "hidden" and encoder.cell in REVERSIBLE_CELLS
            and getattr(encoder, "memory_saving", True)):
        raise ConfigError(f"model.attention.context: 'hidden' stores every encoder state, which a "
                          f"reversible encoder ({encoder.cell}) does not keep; use one of "
                          f"{', '.join(c for c in ATTENTION_CONTEXTS if c != 'hidden')}, or set "
                          f"model.encoder.memory_saving: false (the paper's 300H row)")


def _validate_model(model: ModelConfig) -> None:
    _at_least(model.embedding_dim, 1, "model.embedding_dim")
    _probability(model.dropout, "model.dropout")
    if model.init_uniform is not None and model.init_uniform <= 0:
        raise ConfigError(f"model.init_uniform: must be positive or null, got {model.init_uniform}")
    for side in ("encoder", "decoder"):
        section = getattr(model, side)
        _at_least(section.layers, 1, f"model.{side}.layers")
        _at_least(section.hidden, 1, f"model.{side}.hidden")
        _probability(section.dropout, f"model.{side}.dropout")
        if section.cell in REVERSIBLE_CELLS and section.hidden % 2:
            raise ConfigError(f"model.{side}.hidden: a reversible cell splits the state in two "
                              f"halves, so hidden must be even (got {section.hidden})")
    check_model_rules(model)
    _validate_reversible(model.reversible)
    encoder, attention = model.encoder, model.attention
    needs_size = attention.context.endswith(("slice", "proj"))
    if needs_size:
        if attention.size is None:
            raise ConfigError(f"model.attention.size: context {attention.context!r} needs a size "
                              f"(units to store per step)")
        half = encoder.hidden // 2
        if not 1 <= attention.size <= half:
            raise ConfigError(f"model.attention.size: must be between 1 and half the encoder hidden "
                              f"state ({half}), got {attention.size}")
    elif attention.size is not None:
        raise ConfigError(f"model.attention.size: only used with slice/proj contexts, not "
                          f"{attention.context!r}; set it to null")


def chunk_setting(reversible: ReversibleConfig):
    """model.reversible -> (chunk_steps: int or "auto", chunk_bytes or None); ConfigError if invalid."""
    steps = str(reversible.chunk_steps).strip().lower()
    if steps == "auto":
        if reversible.chunk_mib is None or not reversible.chunk_mib > 0:
            raise ConfigError(f"model.reversible.chunk_mib: chunk_steps 'auto' needs a positive "
                              f"byte budget in MiB, got {reversible.chunk_mib}")
        return "auto", int(reversible.chunk_mib * 2 ** 20)
    if not steps.isdigit() or int(steps) < 1:
        raise ConfigError(f"model.reversible.chunk_steps: must be a positive integer or 'auto', "
                          f"got {reversible.chunk_steps!r}")
    if reversible.chunk_mib is not None:
        raise ConfigError(f"model.reversible.chunk_mib: only used with chunk_steps 'auto' "
                          f"(got chunk_steps {reversible.chunk_steps!r}); set it to null")
    return int(steps), None


def _validate_reversible(reversible: ReversibleConfig) -> None:
    chunk_setting(reversible)
    if reversible.readout_steps is not None and reversible.readout_steps < 1:
        raise ConfigError(f"model.reversible.readout_steps: must be a positive integer or null, "
                          f"got {reversible.readout_steps}")


def _validate_train(train: TrainConfig) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", train.device):
        raise ConfigError(f"train.device: {train.device!r} is not one of auto, cpu, cuda, cuda:N")
    if train.lr <= 0:
        raise ConfigError(f"train.lr: must be positive, got {train.lr}")
    _non_negative(train.momentum, "train.momentum")
    if train.momentum and train.optimizer != "sgd":
        raise ConfigError(f"train.momentum: only used by optimizer sgd, not {train.optimizer!r}")
    _non_negative(train.weight_decay, "train.weight_decay")
    if train.clip_grad_norm is not None and train.clip_grad_norm <= 0:
        raise ConfigError(f"train.clip_grad_norm: must be positive or null, got {train.clip_grad_norm}")
    _probability(train.label_smoothing, "train.label_smoothing")
    _at_least(train.accumulate, 1, "train.accumulate")
    _at_least(train.max_epochs, 1, "train.max_epochs")
    if train.max_steps is not None:
        _at_least(train.max_steps, 1, "train.max_steps")
    if train.max_minutes is not None and train.max_minutes <= 0:
        raise ConfigError(f"train.max_minutes: must be positive or null, got {train.max_minutes}")
    _at_least(train.valid_every, 1, "train.valid_every")
    _non_negative(train.valid_examples, "train.valid_examples")
    _at_least(train.log_every, 1, "train.log_every")
    _at_least(train.keep_last, 1, "train.keep_last")
    if train.early_stopping_patience is not None:
        _at_least(train.early_stopping_patience, 1, "train.early_stopping_patience")
    _non_negative(train.verify_reversal_every, "train.verify_reversal_every")
    _at_least(train.nonfinite_patience, 1, "train.nonfinite_patience")
    schedule = train.lr_schedule
    if not 0.0 < schedule.factor < 1.0:
        raise ConfigError(f"train.lr_schedule.factor: must be in (0, 1), got {schedule.factor}")
    _non_negative(schedule.patience, "train.lr_schedule.patience")
    _non_negative(schedule.min_lr, "train.lr_schedule.min_lr")
    _non_negative(schedule.warmup_steps, "train.lr_schedule.warmup_steps")


def _validate_decode(decode: DecodeConfig) -> None:
    _at_least(decode.beam_size, 1, "decode.beam_size")
    _at_least(decode.nbest, 1, "decode.nbest")
    if decode.nbest > decode.beam_size:
        raise ConfigError(f"decode.nbest: {decode.nbest} is larger than decode.beam_size "
                          f"({decode.beam_size})")
    _non_negative(decode.length_penalty, "decode.length_penalty")
    if decode.max_len_ratio <= 0:
        raise ConfigError(f"decode.max_len_ratio: must be positive, got {decode.max_len_ratio}")
    _non_negative(decode.max_len_offset, "decode.max_len_offset")
    _at_least(decode.batch_size, 1, "decode.batch_size")


def _check_text(value: str, key: str) -> None:
    if not value.strip():
        raise ConfigError(f"{key}: must not be empty")


def _at_least(value, minimum, key: str) -> None:
    if value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {value}")


def _non_negative(value, key: str) -> None:
    if value < 0:
        raise ConfigError(f"{key}: must not be negative, got {value}")


def _probability(value: float, key: str) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}: must be in [0, 1), got {value}")

"""YAML run configuration -> typed dataclasses, validated so that a bad key fails in one line.

`load_config(path)` reads a file, `config_from_dict(d)` rebuilds a config stored in a checkpoint,
`Config.to_dict()` goes back. Every error is a `ConfigError` whose message starts with the
dotted key (or the file name) and says what is allowed; configs/reference.yaml documents the keys.
Relative paths (`run_dir`, `data.dir`) are relative to the current working directory.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import yaml

from nmt.errors import ConfigError

PLAIN_CELLS = ("gru", "lstm")
REVERSIBLE_CELLS = ("revgru", "revlstm")
CELLS = PLAIN_CELLS + REVERSIBLE_CELLS
ATTENTION_CONTEXTS = ("hidden", "emb", "slice", "proj", "emb+slice", "emb+proj")
SPLITS = ("train", "valid", "test")


def _choices(*values) -> dict:
    return {"choices": values}


@dataclass
class TokenizerConfig:
    joint: bool = True
    vocab_size: int = 8000
    model_type: str = field(default="unigram", metadata=_choices("unigram", "bpe", "char", "word"))
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
    cell: str = field(default="gru", metadata=_choices(*CELLS))
    layers: int = 1
    hidden: int = 300
    bidirectional: bool = False
    dropout: float = 0.3
    max_forget_bits: Optional[int] = field(default=3, metadata=_choices(1, 2, 3, 5, None))


@dataclass
class DecoderConfig:
    cell: str = field(default="gru", metadata=_choices(*CELLS))
    layers: int = 1
    hidden: int = 300
    input_feeding: bool = False
    dropout: float = 0.3
    max_forget_bits: Optional[int] = field(default=3, metadata=_choices(1, 2, 3, 5, None))


@dataclass
class AttentionConfig:
    context: str = field(default="hidden", metadata=_choices(*ATTENTION_CONTEXTS))
    size: Optional[int] = None
    precision: int = field(default=32, metadata=_choices(32, 16))


@dataclass
class ModelConfig:
    embedding_dim: int = 300
    tie_embeddings: bool = False
    dropout: float = 0.3
    init_uniform: Optional[float] = 0.1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)


@dataclass
class LRScheduleConfig:
    type: str = field(default="plateau", metadata=_choices("plateau", "constant"))
    factor: float = 0.5
    patience: int = 2
    metric: str = field(default="loss", metadata=_choices("loss", "bleu"))
    min_lr: float = 1.0e-5
    warmup_steps: int = 0


@dataclass
class TrainConfig:
    seed: int = 1
    device: str = "auto"
    optimizer: str = field(default="adam", metadata=_choices("adam", "sgd"))
    lr: float = 0.001
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_grad_norm: Optional[float] = 5.0
    label_smoothing: float = 0.1
    max_epochs: int = 30
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    valid_every: int = 500
    log_every: int = 50
    keep_last: int = 3
    early_stopping_patience: Optional[int] = 8
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    verify_reversal_every: int = 0


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


def load_config(path) -> Config:
    """Read, expand `${VAR}`/`${VAR:-default}`, parse and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = error.problem or error.context or "syntax error"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {str(error).splitlines()[0]}") from None
    lines = _key_lines(root)
    duplicate = _first_duplicate_key(root)
    if duplicate:
        key, line = duplicate
        raise ConfigError(f"{key}: duplicate key ({path} line {line})")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (name, run_dir, data, model, "
                          f"train, decode), got {_type_name(data)}")
    try:
        return config_from_dict(data)
    except ConfigError as error:
        key = str(error).split(":", 1)[0]
        line = lines.get(key)
        where = f"{path} line {line}" if line else str(path)
        raise ConfigError(f"{error} ({where})") from None


def config_from_dict(data: Dict[str, Any]) -> Config:
    """Build and validate a `Config` from a nested dict (as `Config.to_dict()` or YAML gives)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {_type_name(data)}")
    config = _parse_dataclass(Config, data, prefix="")
    if not config.run_dir:
        config.run_dir = f"runs/{config.name}"
    validate(config)
    return config


# --------------------------------------------------------------------------- parsing


_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, key: str) -> str:
    """Replace `${VAR}` and `${VAR:-default}` (default also when VAR is empty) from os.environ."""
    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        current = os.environ.get(name)
        if current:
            return current
        if default is not None:
            return default
        if current is not None:
            return current
        raise ConfigError(f"{key}: environment variable {name} is not set "
                          f"(write ${{{name}:-default}} to give a default)")
    return _ENV_PATTERN.sub(substitute, value)


def _parse_dataclass(cls, data: Dict[str, Any], prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            dotted = f"{prefix}{key}"
            raise ConfigError(f"{dotted}: unknown key; valid keys{' in ' + prefix[:-1] if prefix else ''}"
                              f" are {', '.join(fields)}")
    values = {}
    for name, spec in fields.items():
        if name not in data:
            continue
        dotted = f"{prefix}{name}"
        kind = _field_kind(cls, spec)
        raw = data[name]
        if dataclasses.is_dataclass(kind):
            if raw is None:
                raw = {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{dotted}: expected a section (mapping of keys), got {_type_name(raw)}")
            values[name] = _parse_dataclass(kind, raw, prefix=f"{dotted}.")
        else:
            values[name] = _parse_scalar(raw, spec, dotted, kind)
    return cls(**values)


_TYPE_HINTS = {}


def _field_kind(cls, spec: dataclasses.Field):
    """The concrete type of a field (str annotations resolved once per class)."""
    if cls not in _TYPE_HINTS:
        import typing
        _TYPE_HINTS[cls] = typing.get_type_hints(cls)
    return _TYPE_HINTS[cls][spec.name]


def _parse_scalar(raw, spec: dataclasses.Field, key: str, kind):
    optional = False
    args = getattr(kind, "__args__", None)
    if args and type(None) in args:
        optional = True
        kind = next(arg for arg in args if arg is not type(None))
    choices = spec.metadata.get("choices")
    if isinstance(raw, str) and kind is not str:
        raw = expand_env(raw, key)
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("null", "none", "~")
                       and kind is not str):
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required{_allowed(choices)}")
    if kind is bool:
        value = _as_bool(raw, key)
    elif kind is int:
        value = _as_int(raw, key)
    elif kind is float:
        value = _as_float(raw, key)
    elif kind is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(f"{key}: expected text, got {_type_name(raw)}{_allowed(choices)}")
        value = expand_env(str(raw), key)
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported config field type {kind} for {key}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {_format_choices(choices)}")
    return value


def _as_bool(raw, key: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "yes", "on", "false", "no", "off"):
        return raw.strip().lower() in ("true", "yes", "on")
    raise ConfigError(f"{key}: expected true or false, got {raw!r}")


def _as_int(raw, key: str) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"{key}: expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected an integer, got {raw!r}")


def _as_float(raw, key: str) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"{key}: expected a number, got {raw!r}")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())  # YAML 1.1 reads 1e-5 (no dot) as text
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
    else:
        raise ConfigError(f"{key}: expected a number, got {_type_name(raw)}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{key}: expected a finite number, got {raw!r}")
    return value


def _format_choices(choices) -> str:
    return ", ".join("null" if choice is None else str(choice) for choice in choices)


def _allowed(choices) -> str:
    return f" (one of {_format_choices(choices)})" if choices else ""


def _type_name(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r}"


def _key_lines(node, prefix: str = "") -> Dict[str, int]:
    """Dotted key -> 1-based line in the YAML source, for error messages."""
    lines: Dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            lines.setdefault(dotted, key_node.start_mark.line + 1)
            lines.update({k: v for k, v in _key_lines(value_node, f"{dotted}.").items()
                          if k not in lines})
    return lines


def _first_duplicate_key(node, prefix: str = "") -> Optional[Tuple[str, int]]:
    """PyYAML keeps the last of two equal keys silently; a config should not."""
    if not isinstance(node, yaml.MappingNode):
        return None
    seen = set()
    for key_node, value_node in node.value:
        dotted = f"{prefix}{key_node.value}"
        if dotted in seen:
            return dotted, key_node.start_mark.line + 1
        seen.add(dotted)
        found = _first_duplicate_key(value_node, f"{dotted}.")
        if found:
            return found
    return None


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
    encoder, decoder, attention = model.encoder, model.decoder, model.attention
    if decoder.input_feeding and decoder.cell in REVERSIBLE_CELLS:
        raise ConfigError(f"model.decoder.input_feeding: not possible with a reversible decoder "
                          f"({decoder.cell}): the input would depend on the state it must restore")
    if model.tie_embeddings and decoder.hidden != model.embedding_dim:
        raise ConfigError(f"model.tie_embeddings: needs model.decoder.hidden ({decoder.hidden}) "
                          f"== model.embedding_dim ({model.embedding_dim})")
    if attention.context == "hidden" and encoder.cell in REVERSIBLE_CELLS:
        raise ConfigError(f"model.attention.context: 'hidden' stores every encoder state, which a "
                          f"reversible encoder ({encoder.cell}) does not keep; use one of "
                          f"{', '.join(c for c in ATTENTION_CONTEXTS if c != 'hidden')}")
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
    _at_least(train.max_epochs, 1, "train.max_epochs")
    if train.max_steps is not None:
        _at_least(train.max_steps, 1, "train.max_steps")
    if train.max_minutes is not None and train.max_minutes <= 0:
        raise ConfigError(f"train.max_minutes: must be positive or null, got {train.max_minutes}")
    _at_least(train.valid_every, 1, "train.valid_every")
    _at_least(train.log_every, 1, "train.log_every")
    _at_least(train.keep_last, 1, "train.keep_last")
    if train.early_stopping_patience is not None:
        _at_least(train.early_stopping_patience, 1, "train.early_stopping_patience")
    _non_negative(train.verify_reversal_every, "train.verify_reversal_every")
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


# --------------------------------------------------------------------------- data files


def split_prefix(data: DataConfig, split: str) -> str:
    """The file prefix of a split name ('train', 'valid', 'test')."""
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    return getattr(data, split)


def data_file(data: DataConfig, split: str, lang: str) -> Optional[Path]:
    """`{dir}/{prefix}.{lang}` or `{dir}/{prefix}.{lang}.gz`, whichever exists (plain first)."""
    base = Path(data.dir) / f"{split_prefix(data, split)}.{lang}"
    for candidate in (base, base.with_name(base.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def check_data_files(config: Config, splits: Iterable[str]) -> Dict[str, Tuple[Path, Path]]:
    """Resolve the (src, tgt) files of each split; a missing one is a ConfigError naming it."""
    data = config.data
    if not Path(data.dir).is_dir():
        raise ConfigError(f"data.dir: directory {data.dir} does not exist")
    files = {}
    for split in splits:
        pair = []
        for lang in (data.src, data.tgt):
            path = data_file(data, split, lang)
            if path is None:
                base = Path(data.dir) / f"{split_prefix(data, split)}.{lang}"
                raise ConfigError(f"data.{split}: neither {base} nor {base}.gz exists")
            pair.append(path)
        files[split] = (pair[0], pair[1])
    return files

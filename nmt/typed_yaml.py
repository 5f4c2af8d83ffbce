"""Typed YAML: nested dicts -> dataclasses, with errors that name the dotted key.

Field types come from the annotations (bool, int, float, str, Optional[...], nested dataclasses);
`field(metadata=choices(...))` restricts values. Strings may hold `${VAR}`/`${VAR:-default}`.
`read_yaml_mapping` reports syntax errors with file:line:column, rejects duplicate keys and returns
the line of every dotted key so callers can point at it. Imports nothing from `nmt` but errors.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from nmt.errors import ConfigError


def choices(*values) -> dict:
    """Field metadata: the value must be one of `values` (None allowed if listed)."""
    return {"choices": values}


def read_yaml_mapping(path, *, what: str = "a mapping") -> Tuple[Dict[str, Any], Dict[str, int]]:
    """(top-level mapping, dotted key -> 1-based line) of a YAML file; ConfigError naming the file."""
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
    duplicate = _first_duplicate_key(root)
    if duplicate:
        key, line = duplicate
        raise ConfigError(f"{key}: duplicate key ({path} line {line})")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {what}, got {type_name(data)}")
    return data, _key_lines(root)


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


def parse_dataclass(cls, data: Dict[str, Any], prefix: str = ""):
    """An instance of dataclass `cls` from `data`; unknown keys and bad values are ConfigErrors."""
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
                raise ConfigError(f"{dotted}: expected a section (mapping of keys), got {type_name(raw)}")
            values[name] = parse_dataclass(kind, raw, prefix=f"{dotted}.")
        else:
            values[name] = _parse_scalar(raw, spec, dotted, kind)
    return cls(**values)


_TYPE_HINTS = {}


def _field_kind(cls, spec: dataclasses.Field):
    """The concrete type of a field (str annotations resolved once per class)."""
    if cls not in _TYPE_HINTS:
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
            raise ConfigError(f"{key}: expected text, got {type_name(raw)}{_allowed(choices)}")
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
        raise ConfigError(f"{key}: expected a number, got {type_name(raw)}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{key}: expected a finite number, got {raw!r}")
    return value


def _format_choices(choices) -> str:
    return ", ".join("null" if choice is None else str(choice) for choice in choices)


def _allowed(choices) -> str:
    return f" (one of {_format_choices(choices)})" if choices else ""


def type_name(value) -> str:
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

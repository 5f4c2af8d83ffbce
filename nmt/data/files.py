"""Where a config's data lives: `{data.dir}/{prefix}.{lang}` (or `.gz`) for each split.

The functions take the `data` section of a config (nmt.config.DataConfig), or the whole config
for `check_data_files`; a missing file is a ConfigError naming the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from nmt.errors import ConfigError

SPLITS = ("train", "valid", "test")


def split_prefix(data, split: str) -> str:
    """The file prefix of a split name ('train', 'valid', 'test')."""
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    return getattr(data, split)


def data_file(data, split: str, lang: str) -> Optional[Path]:
    """`{dir}/{prefix}.{lang}` or `{dir}/{prefix}.{lang}.gz`, whichever exists (plain first)."""
    base = Path(data.dir) / f"{split_prefix(data, split)}.{lang}"
    for candidate in (base, base.with_name(base.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def split_files(data, split: str) -> Tuple[Path, Path]:
    """The (src, tgt) files of one split; a missing one is a ConfigError naming it."""
    pair = []
    for lang in (data.src, data.tgt):
        path = data_file(data, split, lang)
        if path is None:
            base = Path(data.dir) / f"{split_prefix(data, split)}.{lang}"
            raise ConfigError(f"data.{split}: neither {base} nor {base}.gz exists")
        pair.append(path)
    return pair[0], pair[1]


def check_data_files(config, splits: Iterable[str]) -> Dict[str, Tuple[Path, Path]]:
    """Resolve the (src, tgt) files of each split of `config.data`; a missing directory or file
    is a ConfigError naming it."""
    data = config.data
    if not Path(data.dir).is_dir():
        raise ConfigError(f"data.dir: directory {data.dir} does not exist")
    return {split: split_files(data, split) for split in splits}

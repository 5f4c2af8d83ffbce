"""Validate a config and its data, train sentencepiece into the run directory, print data counts.

`nmt prepare CONFIG` writes `{run_dir}/config.yaml` (the resolved config) and `{run_dir}/spm/`.
An existing tokenizer trained with the same settings is reused; one trained with other settings
is only replaced with `--force`, so a run directory is never silently changed under a run.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import yaml

from nmt.arguments import add_set_argument
from nmt.config import Config, load_config
from nmt.data.files import check_data_files
from nmt.data.corpus import check_parallel, count_lines, load_split
from nmt.data.tokenizer import Tokenizer, train_tokenizer
from nmt.errors import UserError

SPM_DIR = "spm"
SPM_SETTINGS = "settings.json"
CONFIG_COPY = "config.yaml"


@dataclass
class SplitCounts:
    pairs: int
    kept: int
    src_tokens: int
    tgt_tokens: int


@dataclass
class PrepareSummary:
    run_dir: Path
    tokenizer: Tokenizer
    trained: bool  # False: an existing tokenizer was reused
    counts: Dict[str, SplitCounts] = field(default_factory=dict)


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML config (see configs/reference.yaml)")
    add_set_argument(parser)
    parser.add_argument("--force", action="store_true",
                        help="retrain sentencepiece even if the run directory has one with other settings")


def run(args) -> int:
    config = load_config(args.config, args.set)
    prepare_run(config, force=args.force, report=print)
    return 0


def tokenizer_settings(config: Config) -> dict:
    """What the tokenizer depends on: reuse it only if all of this is unchanged.

    Training files are identified by name and size, not by directory, so a run moved to another
    machine (another MULTI30K_DIR) keeps its tokenizer.
    """
    data = config.data
    src_path, tgt_path = check_data_files(config, ["train"])["train"]
    files = [{"name": path.name, "bytes": path.stat().st_size} for path in (src_path, tgt_path)]
    return {"tokenizer": asdict(data.tokenizer), "train_files": files}


def prepare_tokenizer(config: Config, *, force: bool = False) -> tuple:
    """Load `{run_dir}/spm` if trained with the same settings, else train it; -> (Tokenizer, trained)."""
    spm_dir = Path(config.run_dir) / SPM_DIR
    settings = tokenizer_settings(config)  # also checks that the training files exist
    settings_path = spm_dir / SPM_SETTINGS
    if Tokenizer.exists(spm_dir) and not force:
        try:
            previous = json.loads(settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous == settings:
            return Tokenizer.load(spm_dir), False
        raise UserError(f"{spm_dir}: holds a tokenizer trained with other data.tokenizer settings or "
                        f"training files; retrain it with `nmt prepare --force CONFIG` (checkpoints "
                        f"keep their own) or choose another run_dir")
    tokenizer = train_tokenizer(config.data, spm_dir)
    settings_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return tokenizer, True


def write_config_copy(config: Config) -> Path:
    """The resolved config (defaults filled in, ${VAR}s expanded) as `{run_dir}/config.yaml`."""
    path = Path(config.run_dir) / CONFIG_COPY
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    os.replace(temporary, path)
    return path


def check_parallel_files(config: Config, splits) -> None:
    """The splits' files exist and have one target line per source line (UserError naming both
    files and counts otherwise), checked before a tokenizer is trained or a run directory made."""
    for src_path, tgt_path in check_data_files(config, splits).values():
        check_parallel(src_path, tgt_path, count_lines(src_path), count_lines(tgt_path))


def prepare_run(config: Config, *, force: bool = False,
                report: Optional[Callable[[str], None]] = None) -> PrepareSummary:
    """Everything `nmt prepare` does, callable from `nmt train`; `report` receives summary lines."""
    report = report or (lambda line: None)
    splits = ["train", "valid"]
    try:
        check_data_files(config, ["test"])
        splits.append("test")
    except UserError as error:
        report(f"note: {error} (only `nmt evaluate --split test` needs it)")
    check_parallel_files(config, splits)  # before anything is written
    run_dir = Path(config.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"run_dir: cannot create {run_dir} ({error.strerror})") from None
    tokenizer, trained = prepare_tokenizer(config, force=force)
    config_path = write_config_copy(config)
    summary = PrepareSummary(run_dir=run_dir, tokenizer=tokenizer, trained=trained)
    report(f"run directory: {run_dir} (config copy: {config_path})")
    kind = "joint" if tokenizer.joint else "per-side"
    action = "trained" if trained else "reused"
    report(f"tokenizer: {action} {kind} {config.data.tokenizer.model_type} sentencepiece in "
           f"{run_dir / SPM_DIR}: src vocabulary {tokenizer.src_vocab_size}, "
           f"tgt vocabulary {tokenizer.tgt_vocab_size}")
    for split in splits:
        corpus = load_split(config, split, tokenizer)
        counts = SplitCounts(pairs=len(corpus) + corpus.num_skipped, kept=len(corpus),
                             src_tokens=sum(len(ids) for ids in corpus.src),
                             tgt_tokens=sum(len(ids) for ids in corpus.tgt))
        summary.counts[split] = counts
        skipped = counts.pairs - counts.kept
        note = (f", {skipped} longer than data.max_len={config.data.max_len} skipped"
                if split == "train" else "")
        report(f"{split}: {counts.pairs} pairs{note}; {counts.src_tokens} src / "
               f"{counts.tgt_tokens} tgt subword tokens")
    if summary.counts["train"].kept == 0:
        raise UserError(f"data.train: no training pair has at most data.max_len="
                        f"{config.data.max_len} tokens on both sides")
    return summary

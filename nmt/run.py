"""A run: its directory, tokenizer, model and training, from a config (what `nmt prepare` and
`nmt train` do; the commands only parse arguments and print).

- `prepare_run(config)`: check the data, create the run directory, train or reuse the
  sentencepiece tokenizer (`prepare_tokenizer`), write the resolved config copy, count the data.
- `train_from_config(config)`: prepare, pick the checkpoint to resume from and check it fits
  (`find_resume_checkpoint`, `check_resume_compatible`), seed, build the model, optimizer,
  schedule and stats, train, return the summary record.

What each file of the run directory is called is in nmt.run_layout.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import yaml

from nmt import checkpoint as ckpt
from nmt import distributed
from nmt.config import Config
from nmt.data.batching import EpochBatches, training_sampler
from nmt.data.corpus import check_parallel, count_lines, load_split
from nmt.data.files import check_data_files
from nmt.data.tokenizer import Tokenizer, train_tokenizer
from nmt.device import resolve_device
from nmt.distributed import SINGLE_PROCESS, Distributed, SilentStats
from nmt.errors import UserError
from nmt.models.build import build_model
from nmt.optim import LearningRateSchedule, build_optimizer
from nmt.run_layout import CONFIG_COPY, SPM_DIR, SPM_SETTINGS
from nmt.stats import TrainingStats
from nmt.training import Trainer
from nmt.validation import make_validator


def seed_everything(seed: int) -> None:
    """Seeds Python's, torch's and (when installed) numpy's random number generators."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy
        numpy.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


# --------------------------------------------------------------------------- prepare


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


def create_run_dir(config: Config) -> Path:
    """`run_dir`, created with its parents if missing (a UserError naming it if that fails)."""
    run_dir = Path(config.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"run_dir: cannot create {run_dir} ({error.strerror})") from None
    return run_dir


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
    run_dir = create_run_dir(config)
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


# --------------------------------------------------------------------------- resume


# Keys added after checkpoints were written, with the behaviour those checkpoints trained with.
LEGACY_VALUES = {"model.readout_dropout": "sequence", "model.reversible.kernels": "auto",
                 "model.reversible.fused_activations": False,
                 "model.reversible.fused_products": False, "model.reversible.readout_steps": None}
# How a step is computed, not what is trained: a run may resume on another device or kernel path.
EXECUTION_KEYS = ("data.dir", "data.eval_batch_size", "model.reversible.kernels")


def check_resume_compatible(saved: dict, config: Config, path) -> None:
    """The model and data sections must match the checkpoint's; train/decode may change."""
    current = config.to_dict()
    for section in ("model", "data"):
        differing = _differing_keys(saved.get(section, {}), current[section], section)
        differing = [(key, old, new) for key, old, new in differing
                     if key not in EXECUTION_KEYS]
        if differing:
            listed = ", ".join(f"{key} (checkpoint: {old!r}, config: {new!r})"
                               for key, old, new in differing)
            raise UserError(f"--resume: {listed} differ(s) from checkpoint {path}; set the "
                            f"checkpoint's value in the config, or start a new run_dir to change it")


def _differing_keys(old, new, prefix: str) -> List[Tuple[str, object, object]]:
    """(dotted key, checkpoint value, config value) where they differ; a key the checkpoint
    predates counts with its LEGACY_VALUES entry."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys(list(old) + list(new)))
        return [found for key in keys
                for found in _differing_keys(old.get(key, LEGACY_VALUES.get(f"{prefix}.{key}")),
                                             new.get(key), f"{prefix}.{key}")]
    return [] if old == new else [(prefix, old, new)]


def find_resume_checkpoint(run_dir: Path, resume: bool, placement: Distributed):
    """The checkpoint to resume from (or None for a fresh run), chosen by rank 0 for all ranks.

    Rank 0 alone removes half-written temporaries and reads the fallback chain; an error it
    finds is raised on every rank, so no rank waits for the others."""
    decision = None
    if placement.is_main:
        try:
            ckpt.remove_stale_temporaries(run_dir)
            decision = ("fresh", None)
            if resume:
                payload = ckpt.load_latest_good(run_dir)
                if payload is None:
                    raise UserError(f"--resume: {ckpt.checkpoint_dir(run_dir)} has no checkpoints "
                                    f"to resume from")
                decision = ("resume", payload["path"])
            elif ckpt.step_checkpoints(run_dir):
                raise UserError(f"run_dir {run_dir} already has checkpoints: use --resume to "
                                f"continue it, or choose a new run_dir")
        except UserError as error:
            decision = ("error", str(error))
    kind, value = distributed.broadcast_object(decision, placement)
    if kind == "error":
        raise UserError(value)
    if kind == "fresh":
        return None
    if placement.is_main:
        return payload
    payload = ckpt.load_checkpoint(value)
    payload["path"] = value
    return payload


# --------------------------------------------------------------------------- train


def train_from_config(config: Config, *, resume: bool = False, progress=None,
                      echo: bool = True, placement: Distributed = SINGLE_PROCESS,
                      device: torch.device = None) -> dict:
    """Prepare, build and train; returns the summary record. Under torchrun (`placement`),
    rank 0 prepares the run directory and the tokenizer, the other ranks wait and load them."""
    check_parallel_files(config, ["train", "valid"])  # before anything is written
    run_dir = create_run_dir(config)
    payload = find_resume_checkpoint(run_dir, resume, placement)
    if payload is not None:
        check_resume_compatible(payload["config"], config, payload["path"])
    if placement.is_main:
        tokenizer, _ = prepare_tokenizer(config)
        write_config_copy(config)
    distributed.barrier(placement)
    if not placement.is_main:
        tokenizer, _ = prepare_tokenizer(config)
    if payload is not None and ckpt.tensor_to_bytes(payload["tokenizer"]) != tokenizer.to_bytes():
        raise UserError(f"--resume: {run_dir / SPM_DIR} is not the tokenizer of {payload['path']}")
    device = device or resolve_device(config.train.device)
    seed_everything(config.train.seed)

    train_corpus, sampler = training_sampler(config, tokenizer)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size).to(device)
    if placement.rank > 0:  # rank 0's parameters are broadcast; dropout differs between ranks
        seed_everything(config.train.seed + placement.rank)
    optimizer = build_optimizer(model.parameters(), config.train)
    schedule = LearningRateSchedule.from_config(optimizer, config.train)
    stats = TrainingStats(run_dir, log_every=config.train.log_every,
                          initial_step=payload["step"] if payload else 0,
                          total_steps=config.train.max_steps, progress=progress,
                          echo=echo) if placement.is_main else SilentStats()
    static_payload = {"config": config.to_dict(), "tokenizer": ckpt.bytes_to_tensor(tokenizer.to_bytes()),
                      "vocab_sizes": {"src": tokenizer.src_vocab_size, "tgt": tokenizer.tgt_vocab_size}}
    trainer = Trainer(model=model, optimizer=optimizer, schedule=schedule, train_cfg=config.train,
                      run_dir=run_dir, stats=stats,
                      epoch_batches=lambda epoch: EpochBatches(
                          train_corpus, sampler.batches_for_epoch(epoch - 1), placement),
                      validate=make_validator(config, tokenizer, device, placement),
                      static_payload=static_payload, device=device, placement=placement)
    parameters = sum(p.numel() for p in model.parameters())
    processes = f" x {placement.world_size} processes" if placement.enabled else ""
    stats.message(f"{config.name}: {parameters} parameters on {device}{processes}; "
                  f"{len(train_corpus)} training "
                  f"pairs ({train_corpus.num_skipped} skipped by data.max_len), "
                  f"{len(sampler.batches_for_epoch(0))} batches per epoch")
    if payload is not None:
        trainer.restore(payload)  # last: it also restores the random number generators
        stats.message(f"resumed from {payload['path']} at step {payload['step']}")
    return trainer.train()

"""Train a model from a config (runs `nmt prepare` first when the run has no tokenizer).

Everything goes to the config's `run_dir`: config.yaml, spm/, train.log, metrics.jsonl,
tensorboard/, checkpoints/step-N.pt (last `train.keep_last`), latest.pt and best.pt (best
validation BLEU), validations/step-N.txt (each validation's hypotheses). Validation (loss, BLEU,
chrF on the `data.valid` split) decodes greedily for speed and logs `train.valid_examples`
translations; `nmt evaluate` scores with the configured beam. `--resume` continues from the newest
loadable checkpoint of the run exactly where it stopped (same batches, same random numbers).

Several processes (GPUs, or CPU processes with gloo) through torchrun:

    torchrun --nproc-per-node 4 -m nmt train CONFIG [--resume]

Every process takes a disjoint share of each global batch (`data.batch_tokens` is the global
budget, so the updates equal a single process's on the same batches), gradients are averaged by
DistributedDataParallel, validation is split across processes and combined, and only rank 0
writes checkpoints, logs and TensorBoard. `--resume` works the same way.
"""
from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from typing import List, Tuple

import torch

from nmt.arguments import add_set_argument, describe
from nmt import checkpoint as ckpt
from nmt import distributed
from nmt.config import Config, load_config, validate
from nmt.data.files import check_data_files
from nmt.data.batching import collate, training_sampler
from nmt.data.corpus import encode_parallel, read_parallel
from nmt.device import resolve_device
from nmt.distributed import SINGLE_PROCESS, Distributed, Shard, SilentStats, shard_of
from nmt.errors import ConfigError, UserError
from nmt.evaluation import corpus_loss, score_corpus
from nmt.models.build import build_model
from nmt.optim import LearningRateSchedule, build_optimizer
from nmt.stats import TrainingStats
from nmt.training import Trainer, ValidationOutput
from nmt.translation import DecodeOptions, Translator

NO_LIMIT = 1 << 30


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("config", help="YAML config (see configs/reference.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the config's run_dir from its newest loadable "
                             "checkpoint (a corrupted newest one is skipped with a warning)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (log lines still go to stderr and train.log)")
    add_set_argument(parser)
    parser.add_argument("--max-epochs", type=int, metavar="E",
                        help="override train.max_epochs for this run (the config file is unchanged)")
    parser.add_argument("--max-minutes", type=_minutes_or_none, metavar="M",
                        help="override train.max_minutes (wall-clock training budget); 'none' "
                             "lifts the config's limit")


def run(args) -> int:
    config = apply_budget_overrides(load_config(args.config, args.set), max_epochs=args.max_epochs,
                                    max_minutes=args.max_minutes)
    placement, device = distributed.initialize(resolve_device(config.train.device))
    try:
        train_from_config(config, resume=args.resume, echo=placement.is_main,
                          progress=False if args.no_progress or not placement.is_main else None,
                          placement=placement, device=device)
        distributed.barrier(placement)  # no rank tears gloo down while another still uses it
    finally:
        distributed.shutdown()
    return 0


def _minutes_or_none(text: str):
    """argparse type of --max-minutes: a positive number, or 'none' (no wall-clock limit)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes or 'none', got {text!r}") from None


def apply_budget_overrides(config: Config, *, max_epochs=None, max_minutes=None) -> Config:
    """The command line's budget replaces the config's (`max_minutes='none'`: no time limit)."""
    if max_epochs is not None:
        config.train.max_epochs = max_epochs
    if max_minutes is not None:
        config.train.max_minutes = None if max_minutes == "none" else max_minutes
    try:
        validate(config)
    except ConfigError as error:
        key = str(error).split(":", 1)[0].replace("train.max_", "--max-")
        raise UserError(f"{key}: {str(error).split(':', 1)[1].strip()}") from None
    return config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy
        numpy.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


class EpochBatches:
    """The batches of one epoch, collated on access (a Sequence the Trainer indexes).

    Under torchrun each item is this rank's `Shard` of the global batch (nmt.distributed)."""

    def __init__(self, corpus, index_batches: List[List[int]],
                 placement: Distributed = SINGLE_PROCESS):
        self.corpus = corpus
        self.index_batches = index_batches
        self.placement = placement

    def __len__(self) -> int:
        return len(self.index_batches)

    def __getitem__(self, position: int):
        chosen, weight = self.index_batches[position], 1.0
        if self.placement.enabled:
            chosen, weight = shard_of(chosen, self.placement)
        corpus = self.corpus
        batch = collate([corpus.src[i] for i in chosen], [corpus.tgt[i] for i in chosen],
                        [corpus.indices[i] for i in chosen])
        return Shard(batch, weight) if self.placement.enabled else batch


# Keys added after checkpoints were written, with the behaviour those checkpoints trained with.
LEGACY_VALUES = {"model.readout_dropout": "sequence"}


def check_resume_compatible(saved: dict, config: Config, path) -> None:
    """The model and data sections must match the checkpoint's; train/decode may change."""
    current = config.to_dict()
    for section in ("model", "data"):
        differing = _differing_keys(saved.get(section, {}), current[section], section)
        differing = [(key, old, new) for key, old, new in differing
                     if key not in ("data.dir", "data.eval_batch_size")]
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


def make_validator(config: Config, tokenizer, device: torch.device,
                   placement: Distributed = SINGLE_PROCESS):
    """`validate(model) -> ValidationOutput` on the `data.valid` split: loss/ppl, greedy BLEU and
    chrF, every hypothesis, and the first `train.valid_examples` (source, reference, hypothesis).

    Under torchrun each rank scores every world_size-th sentence; NLL sums and hypotheses are
    combined across ranks, so every rank returns the same scores (and takes the same
    early-stopping and learning-rate decisions)."""
    src_path, tgt_path = check_data_files(config, ["valid"])["valid"]
    src_lines, references = read_parallel(src_path, tgt_path)
    corpus = encode_parallel(src_lines, references, tokenizer)
    options = DecodeOptions.from_config(config, beam_size=1, nbest=1,
                                        batch_size=config.data.eval_batch_size)
    options.max_src_len = NO_LIMIT
    mine = list(range(placement.rank, len(corpus.src), placement.world_size))
    src_ids, tgt_ids = [corpus.src[i] for i in mine], [corpus.tgt[i] for i in mine]
    num_tokens = sum(len(t) + 1 for t in tgt_ids)  # target tokens + EOS, as the loss counts them
    example_rows = range(min(config.train.valid_examples, len(corpus.src)))

    def validate(model) -> dict:
        scores = corpus_loss(model, src_ids, tgt_ids, batch_size=config.data.eval_batch_size,
                             device=device)
        if placement.enabled:
            nll_sum, tokens = distributed.all_reduce_sums([scores["loss"] * num_tokens, num_tokens],
                                                          placement, device)
            loss = nll_sum / max(tokens, 1)
            scores = {"loss": loss, "ppl": math.exp(min(loss, 100.0))}
        translator = Translator(model, tokenizer, options=options, device=device)
        found = translator.translate_ids(src_ids) if src_ids else []
        hypotheses = [tokenizer.decode_tgt(best[0][0]) if best else "" for best in found]
        ordered = [""] * len(corpus.src)
        for part in distributed.gather_objects(list(zip(mine, hypotheses)), placement):
            for index, hypothesis in part:
                ordered[index] = hypothesis
        bleu = score_corpus(ordered, references)
        scores.update(bleu=bleu.bleu, chrf=bleu.chrf, bleu_signature=bleu.bleu_signature,
                      chrf_signature=bleu.chrf_signature, note="greedy")
        return ValidationOutput(scores, hypotheses=ordered, examples=[
            (src_lines[i], references[i], ordered[i]) for i in example_rows])

    return validate


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


def train_from_config(config: Config, *, resume: bool = False, progress=None,
                      echo: bool = True, placement: Distributed = SINGLE_PROCESS,
                      device: torch.device = None) -> dict:
    """Prepare, build and train; returns the summary record. Under torchrun (`placement`),
    rank 0 prepares the run directory and the tokenizer, the other ranks wait and load them."""
    from nmt.commands.prepare import (SPM_DIR, check_parallel_files, prepare_tokenizer,
                                      write_config_copy)

    check_parallel_files(config, ["train", "valid"])  # before anything is written
    run_dir = Path(config.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"run_dir: cannot create {run_dir} ({error.strerror})") from None
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

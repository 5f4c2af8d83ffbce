"""The training loop: updates, validation, checkpoints, early stopping and exact resume.

The loop is written against small interfaces so it can be tested with toy models:

- `model` follows the Model contract (`training_loss(batch, label_smoothing=...) -> LossOutput`).
- `epoch_batches(epoch) -> Sequence[Batch]` returns the batches of epoch `epoch` (1-based), the
  same ones every time it is called with the same epoch (seeded shuffling); indexed lazily. The sampler position saved
  in checkpoints is `(epoch, batches of it already done)`, so resuming regenerates the epoch and
  skips what was done.
- `validate(model) -> ValidationOutput` (or a plain scores dict) with at least `loss` and `bleu`
  (see `make_validator` in nmt.validation); rank 0 writes its hypotheses to
  `{run_dir}/validations/step-N.txt` and logs its examples.
- `static_payload` is the part of every checkpoint that never changes during a run (config dict,
  tokenizer bytes, vocabulary sizes).
- `placement` (nmt.distributed): under torchrun, `epoch_batches` yields this rank's `Shard` of
  each global batch; the model is wrapped in DistributedDataParallel, losses and token counts are
  summed over ranks before backward, and only rank 0 writes checkpoints. `validate` must return
  the same scores on every rank (it reduces across ranks itself).

With `train.accumulate: N` an update sums the gradients of N consecutive batches of the epoch
(the last update of an epoch takes what is left); steps count updates, the sampler position
counts batches, and checkpoints fall between updates, so resuming regroups the same batches.

Safety checks on every update: a batch whose loss or gradient norm is NaN/inf (on any rank) is
skipped with a warning and the parameters stay as they were; `train.nonfinite_patience` such
batches in a row stop training with an error. With `train.verify_reversal_every: N`, every N-th
step checks on its batch that reversing the reversible encoder/decoder restores every state
exactly (`model.verify_reversal(batch)` if the model has it, else nmt.reversal_drift's Seq2Seq
check) and stops with the step, part, layer and largest difference on a mismatch.

Resume restores model, optimizer, LR schedule, early-stopping counters, sampler position and the
python/torch RNG states, so a resumed run computes the same losses as one never stopped.
`max_minutes` counts training wall time across resumes (from the start of the loop, so tokenizer
training and data loading are not counted). Ctrl-C writes a checkpoint of the last completed
update, with the random state from before the interrupted one, so resuming stays exact (under
torchrun it writes nothing: the other ranks may be gone; --resume uses the last checkpoint).
Distributed checkpoints hold every rank's random state, restored per rank when the number of
processes is unchanged.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import torch

from nmt import checkpoint as ckpt
from nmt import distributed
from nmt.distributed import SINGLE_PROCESS, Distributed, as_shard
from nmt.errors import ConfigError, UserError
from nmt.optim import LearningRateSchedule
from nmt.reversal_drift import reversal_check_for
from nmt.run_layout import validation_path
from nmt.stats import TrainingStats
from nmt.validation import ValidationOutput


@dataclass
class TrainingState:
    """Progress counters that go into checkpoints (plain numbers only)."""

    step: int = 0
    epoch: int = 1                 # the epoch being trained (1-based)
    batch_in_epoch: int = 0        # batches of `epoch` already used
    best_bleu: Optional[float] = None
    best_step: Optional[int] = None
    validations_without_improvement: int = 0
    last_valid_step: int = -1
    elapsed_seconds: float = 0.0   # training wall time before this process started
    nonfinite_in_a_row: int = 0    # consecutive batches skipped for a NaN/inf loss or gradient
    skipped_batches: int = 0       # all batches skipped so far
    history: List[dict] = field(default_factory=list)  # (step, bleu) of each validation

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingState":
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


class TrainingStopped(UserError):
    """Training cannot go on (non-finite losses, reversal drift); the message says why and where."""


class Trainer:
    """Runs updates until max_epochs, max_steps, max_minutes or early stopping says stop."""

    def __init__(self, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 schedule: LearningRateSchedule, train_cfg, run_dir, stats: TrainingStats,
                 epoch_batches: Callable[[int], Sequence],
                 validate: Callable[[torch.nn.Module], Union[ValidationOutput, dict]],
                 static_payload: dict, device: torch.device = torch.device("cpu"),
                 placement: Distributed = SINGLE_PROCESS):
        self._reversal_check = reversal_check_for(model)
        if getattr(train_cfg, "verify_reversal_every", 0) and self._reversal_check is None:
            raise ConfigError("train.verify_reversal_every: this model has no reversible RNN to "
                              "verify (use revgru/revlstm cells, or set it to 0)")
        self.model = model
        self.placement = placement
        self.train_model = distributed.wrap_model(model, placement, device)
        self.optimizer = optimizer
        self.schedule = schedule
        self.cfg = train_cfg
        self.run_dir = run_dir
        self.stats = stats
        self.epoch_batches = epoch_batches
        self.validate_fn = validate
        self.static_payload = static_payload
        self.device = device
        self.accumulate = int(getattr(train_cfg, "accumulate", 1))
        self.state = TrainingState()
        self._started = time.perf_counter()
        self._applying = False
        self._rng_before_update: Optional[dict] = None

    # --- resume ----------------------------------------------------------------------------------

    def restore(self, payload: dict) -> None:
        """Loads a step checkpoint's model and resume state (RNG last, just before training)."""
        training = payload.get("training")
        if not training:
            raise UserError(f"checkpoint {payload.get('path', '')}: has no resume state "
                            f"(averaged or best-only checkpoint)")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.schedule.load_state_dict(training["lr_schedule"])
        self.state = TrainingState.from_dict(training["state"])
        self.schedule.set_step(self.state.step)
        per_rank = training.get("rng_per_rank") or []
        same_world = len(per_rank) == self.placement.world_size
        ckpt.restore_rng_state(per_rank[self.placement.rank] if same_world else training["rng"])

    # --- the loop --------------------------------------------------------------------------------

    def elapsed_minutes(self) -> float:
        return (self.state.elapsed_seconds + time.perf_counter() - self._started) / 60.0

    def _agreed_elapsed_minutes(self) -> float:
        """Rank 0's clock on every rank, so all ranks stop after the same step."""
        return distributed.broadcast_object(self.elapsed_minutes(), self.placement)

    def train(self) -> dict:
        """Trains to a stop condition; returns the summary record (also in metrics.jsonl)."""
        cfg, state = self.cfg, self.state
        reason = self._stop_reason(after_validation=True)  # a resumed run may already be done
        self.stats.restart_clock()  # tokens/s counts training, not start-up
        try:
            while reason is None:
                if state.epoch > cfg.max_epochs:
                    reason = "max_epochs"
                    break
                batches = self.epoch_batches(state.epoch)
                if not batches:
                    raise UserError("the training data gives no batches (all pairs filtered out? "
                                    "check data.max_len and data.batch_tokens)")
                while state.batch_in_epoch < len(batches) and reason is None:
                    end = min(len(batches), state.batch_in_epoch + self.accumulate)
                    self._update([batches[i] for i in range(state.batch_in_epoch, end)])
                    reason = self._after_update()
                if state.batch_in_epoch >= len(batches):
                    finished = state.epoch
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    if state.last_valid_step != state.step:
                        reason = self._validate_and_save(epoch=finished) or reason
                    else:
                        self._save_step_checkpoint()  # same step, new position: start of next epoch
        except KeyboardInterrupt:
            self._save_on_interrupt()
            self.stats.close()
            raise
        return self._finish(reason)

    def _update(self, group: Sequence) -> None:
        """One optimizer step from the summed gradients of `group`'s batches (train.accumulate).

        Each batch's loss sum is divided by the target tokens of the whole group, so the update
        equals one over a batch holding them all; under DDP only the last backward all-reduces."""
        state, placement = self.state, self.placement
        self._rng_before_update = ckpt.capture_rng_state()  # what an interrupted update rewinds to
        self.model.train()
        shards = [as_shard(item).to(self.device) for item in group]
        lr = self.schedule.set_step(state.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        (num_tokens,) = distributed.all_reduce_sums(
            [sum(int(shard.batch.num_tgt_tokens) * shard.weight for shard in shards)],
            placement, self.device)
        loss_sum = nll_sum = 0.0
        memory = []  # each batch's figures, when the model reports them
        for index, shard in enumerate(shards):
            last = index == len(shards) - 1
            with distributed.gradient_sync(self.train_model, placement, enabled=last):
                if placement.enabled:
                    output = self.train_model(shard.batch, label_smoothing=self.cfg.label_smoothing)
                else:
                    output = self.model.training_loss(shard.batch,
                                                      label_smoothing=self.cfg.label_smoothing)
                (output.loss * (placement.world_size * shard.weight) / num_tokens).backward()
            # read after backward: a reversible decoder computes its loss while reversing
            loss_sum += _loss_value(output) * shard.weight
            nll_sum += float(output.nll) * shard.weight
            if getattr(output, "memory", None):
                memory.append(output.memory)
        loss_sum, nll_sum = distributed.all_reduce_sums([loss_sum, nll_sum], placement, self.device)
        if not math.isfinite(loss_sum):
            self._skip_batch(f"loss is {loss_sum}", len(group))
            return
        norm = self._gradient_norm()
        if not math.isfinite(norm):
            self._skip_batch(f"gradient norm is {norm}", len(group))
            return
        self._applying = True  # parameters change from here until the counters say so
        self.optimizer.step()
        state.step += 1
        state.batch_in_epoch += len(group)
        state.nonfinite_in_a_row = 0
        self._applying = False
        self._rng_before_update = None
        self.stats.train_step(state.step, epoch=state.epoch, loss_sum=loss_sum, nll_sum=nll_sum,
                              num_tokens=int(round(num_tokens)), lr=lr,
                              memory=memory)
        self._verify_reversal(shards[-1].batch)

    def _gradient_norm(self) -> float:
        """The global gradient norm (after DDP's all-reduce: the same on every rank), clipped
        to train.clip_grad_norm when set."""
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.clip_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(parameters, self.cfg.clip_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        return float(norm)

    def _skip_batch(self, reason: str, batches: int = 1) -> None:
        """Drops an update (its `batches`) whose loss or gradient is not finite; stops after too
        many in a row."""
        state = self.state
        self.optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += batches
        state.nonfinite_in_a_row += 1
        state.skipped_batches += 1
        self._rng_before_update = None
        first = state.batch_in_epoch - batches + 1
        span = f"batch {first}" if batches == 1 else f"batches {first}-{state.batch_in_epoch}"
        where = f"epoch {state.epoch} {span} (after step {state.step})"
        patience = getattr(self.cfg, "nonfinite_patience", 5)
        if state.nonfinite_in_a_row >= patience:
            raise TrainingStopped(
                f"training stopped: {state.nonfinite_in_a_row} batches in a row had a non-finite "
                f"loss or gradient (last: {where}, {reason}; train.nonfinite_patience={patience}); "
                f"lower train.lr or enable train.clip_grad_norm, then --resume")
        self.stats.message(f"warning: skipped {where}: {reason} "
                           f"({state.nonfinite_in_a_row} in a row)")

    def _verify_reversal(self, batch) -> None:
        """Every train.verify_reversal_every steps: the model's exact-reversal self-check."""
        every = getattr(self.cfg, "verify_reversal_every", 0)
        if not every or self.state.step % every:
            return
        with torch.no_grad():
            mismatch = self._reversal_check(batch)
        if mismatch:
            raise TrainingStopped(f"reversal drift at training step {self.state.step} "
                                  f"(rank {self.placement.rank}): {mismatch}")

    def _after_update(self) -> Optional[str]:
        """Mid-epoch checks: periodic validation and the stop conditions."""
        cfg, state = self.cfg, self.state
        reason = self._stop_reason()
        if reason or (cfg.valid_every and state.step % cfg.valid_every == 0):
            reason = self._validate_and_save(epoch=state.epoch) or reason
        return reason

    def _stop_reason(self, *, after_validation: bool = False) -> Optional[str]:
        cfg, state = self.cfg, self.state
        if cfg.max_steps and state.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes and self._agreed_elapsed_minutes() >= cfg.max_minutes:
            return "max_minutes"
        if after_validation and state.epoch > cfg.max_epochs:
            return "max_epochs"
        patience = cfg.early_stopping_patience
        if after_validation and patience is not None and state.validations_without_improvement >= patience:
            return "early_stopping"
        return None

    def _validate_and_save(self, *, epoch: int) -> Optional[str]:
        """Validates, updates schedule/best/early stopping, writes checkpoints; may say stop."""
        cfg, state = self.cfg, self.state
        self.stats.flush_window(state.step, epoch=epoch, lr=self.schedule.lr)
        self.model.eval()
        with torch.no_grad():
            output = self.validate_fn(self.model)
        if not isinstance(output, ValidationOutput):
            output = ValidationOutput(dict(output))
        scores = dict(output.scores)
        state.last_valid_step = state.step
        bleu = float(scores["bleu"])
        improved = state.best_bleu is None or bleu > state.best_bleu
        if improved:
            state.best_bleu, state.best_step = bleu, state.step
            state.validations_without_improvement = 0
        else:
            state.validations_without_improvement += 1
        state.history.append({"step": state.step, "bleu": bleu})
        if self.schedule.on_validation(scores, state.step):
            self.stats.message(f"learning rate decayed to {self.schedule.base_lr:.3e}")
        scores.update(best_bleu=state.best_bleu, lr=self.schedule.lr)
        self.stats.validation(state.step, epoch=epoch, scores=scores)
        self._keep_validation_output(output)
        self._save_step_checkpoint()
        if improved and self.placement.is_main:
            ckpt.save_checkpoint(ckpt.best_checkpoint_path(self.run_dir),
                                 self._payload(resume=False))
        self.stats.restart_clock()
        patience = cfg.early_stopping_patience
        if patience is not None and state.validations_without_improvement >= patience:
            self.stats.message(f"early stopping: no BLEU improvement in {patience} validations")
            return "early_stopping"
        return None

    def _keep_validation_output(self, output: ValidationOutput) -> None:
        """Rank 0: the hypotheses to validations/step-N.txt, the examples to the log."""
        if not self.placement.is_main:
            return
        for number, (source, reference, hypothesis) in enumerate(output.examples, start=1):
            self.stats.message(f"  example {number} source:     {source}")
            self.stats.message(f"  example {number} reference:  {reference}")
            self.stats.message(f"  example {number} hypothesis: {hypothesis}")
        if output.hypotheses is not None:
            path = validation_path(self.run_dir, self.state.step)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(line + "\n" for line in output.hypotheses), encoding="utf-8")

    # --- checkpoints -----------------------------------------------------------------------------

    def _save_on_interrupt(self) -> None:
        """Ctrl-C: a checkpoint of the last completed update, unless parameters are half-updated."""
        if self._applying:
            self.stats.message(f"interrupted while applying update {self.state.step + 1}: "
                               f"no checkpoint written; the previous one stays")
            return
        if self.placement.enabled:  # the other ranks may be gone: no collective, no checkpoint
            self.stats.message(f"distributed run interrupted after step {self.state.step}: "
                               f"--resume continues from the last checkpoint")
            return
        self.stats.message(f"interrupted after step {self.state.step}: writing a checkpoint")
        self._save_step_checkpoint(rng=self._rng_before_update)

    def _payload(self, *, resume: bool, rng: Optional[dict] = None,
                 rng_per_rank: Optional[list] = None) -> dict:
        state = self.state
        payload = dict(self.static_payload, model=self.model.state_dict(), step=state.step,
                       epoch=state.epoch, best_score=state.best_bleu, training=None)
        if resume:
            saved_state = state.to_dict()
            saved_state["elapsed_seconds"] = self.elapsed_minutes() * 60.0
            payload["training"] = {
                "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.schedule.state_dict(),
                "state": saved_state,
                "rng": rng or ckpt.capture_rng_state(),
            }
            if rng_per_rank:
                payload["training"]["rng_per_rank"] = rng_per_rank
        return payload

    def _save_step_checkpoint(self, *, rng: Optional[dict] = None) -> None:
        """Rank 0 writes; under torchrun every rank's random state goes in (a collective)."""
        per_rank = None
        if self.placement.enabled:
            per_rank = distributed.gather_objects(ckpt.capture_rng_state(), self.placement)
        if not self.placement.is_main:
            return
        path = ckpt.save_checkpoint(ckpt.step_checkpoint_path(self.run_dir, self.state.step),
                                    self._payload(resume=True, rng=rng, rng_per_rank=per_rank))
        ckpt.point_latest_at(self.run_dir, path)
        ckpt.prune_step_checkpoints(self.run_dir, self.cfg.keep_last)

    def _finish(self, reason: str) -> dict:
        state = self.state
        summary = self.stats.summary(
            stop_reason=reason, steps=state.step, epochs_completed=state.epoch - 1,
            wall_minutes=round(self.elapsed_minutes(), 3), best_bleu=state.best_bleu,
            best_step=state.best_step, best_checkpoint=str(ckpt.best_checkpoint_path(self.run_dir)),
            bleu_curve=state.history)
        self.stats.close()
        return summary


def _loss_value(output) -> float:
    """The loss of a LossOutput as a float (read after backward: a reversible model's raises
    before); other objects with a `loss` tensor (test doubles) are read directly."""
    value = getattr(output, "loss_value", None)
    return value() if value is not None else float(output.loss.detach())

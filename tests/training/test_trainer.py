"""The training loop against a fake model: schedule, early stopping, checkpoints, memory hook."""
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from nmt import checkpoint as ckpt
from nmt.optim import LearningRateSchedule
from nmt.stats import TrainingStats, read_metrics
from nmt.training import Trainer
from nmt.validation import ValidationOutput


@dataclass
class FakeLoss:
    loss: torch.Tensor
    nll: float
    num_tokens: int
    memory: dict = field(default_factory=dict)


class FakeBatch:
    def __init__(self, value: float, tokens: int):
        self.x = torch.tensor([value])
        self.num_tgt_tokens = tokens

    def to(self, device):
        return self


class FakeModel(torch.nn.Module):
    """Loss (w - x)^2 summed over `tokens` copies; reports a memory figure."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_loss(self, batch, *, label_smoothing=0.0):
        self.seen.append(float(batch.x))
        loss = ((self.w - batch.x) ** 2).sum() * batch.num_tgt_tokens
        return FakeLoss(loss, float(loss.detach()), batch.num_tgt_tokens, {"encoder_ratio": 7.5})


def train_cfg(**overrides):
    values = dict(label_smoothing=0.0, clip_grad_norm=None, max_epochs=3, max_steps=None,
                  max_minutes=None, valid_every=100, keep_last=2, early_stopping_patience=None)
    values.update(overrides)
    return SimpleNamespace(**values)


def make_trainer(tmp_path, validations, *, cfg, patience=0, batches_per_epoch=3):
    model = FakeModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = LearningRateSchedule(optimizer, lr=0.1, metric="bleu", patience=patience, factor=0.5)
    scores = iter(validations)

    def validate(m):
        assert not m.training  # validation runs in eval mode
        return {"loss": 1.0, "bleu": next(scores), "chrf": 1.0}

    stats = TrainingStats(tmp_path, log_every=1, progress=False, echo=False)
    epoch_batches = lambda epoch: [FakeBatch(epoch * 10 + i, tokens=4) for i in range(batches_per_epoch)]
    trainer = Trainer(model=model, optimizer=optimizer, schedule=schedule, train_cfg=cfg,
                      run_dir=tmp_path, stats=stats, epoch_batches=epoch_batches, validate=validate,
                      static_payload={"config": {}, "tokenizer": torch.zeros(1, dtype=torch.uint8),
                                      "vocab_sizes": {"src": 1, "tgt": 1}})
    return trainer, model


def test_epochs_validate_at_end_and_every_n_steps(tmp_path):
    trainer, model = make_trainer(tmp_path, [1, 2, 3, 4, 5], cfg=train_cfg(valid_every=2, max_epochs=2))
    summary = trainer.train()
    assert model.seen == [10, 11, 12, 20, 21, 22]  # every batch once per epoch, in order
    valid_steps = [r["step"] for r in read_metrics(tmp_path, "valid")]
    assert valid_steps == [2, 3, 4, 6]  # every 2 steps and at each epoch end (3, 6), once at 6
    assert summary["stop_reason"] == "max_epochs" and summary["steps"] == 6
    assert summary["best_bleu"] == 4 and summary["epochs_completed"] == 2


def test_early_stopping_and_lr_decay_on_plateau(tmp_path):
    trainer, model = make_trainer(tmp_path, [5, 4, 6, 6, 3, 2], cfg=train_cfg(
        valid_every=1, max_epochs=5, early_stopping_patience=3), patience=0)
    summary = trainer.train()
    assert summary["stop_reason"] == "early_stopping"
    assert summary["steps"] == 6 and summary["best_step"] == 3
    # bleu 4 (step 2) did not improve -> lr halves; 6 improves; 6, 3, 2 don't -> 3 more halvings
    lrs = [r["lr"] for r in read_metrics(tmp_path, "valid")]
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.0125, 0.00625])
    best = ckpt.load_checkpoint(ckpt.best_checkpoint_path(tmp_path))
    assert best["step"] == 3 and best["best_score"] == 6 and best["training"] is None


def test_keeps_last_k_checkpoints_with_resume_state(tmp_path):
    trainer, _ = make_trainer(tmp_path, range(100), cfg=train_cfg(valid_every=1, max_steps=5))
    trainer.train()
    kept = ckpt.step_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["step-00000004.pt", "step-00000005.pt"]
    latest = ckpt.load_checkpoint(ckpt.latest_checkpoint_path(tmp_path))
    assert latest["step"] == 5 and latest["training"]["state"]["batch_in_epoch"] == 2
    assert latest["training"]["state"]["epoch"] == 2


def test_memory_figures_reach_every_sink(tmp_path):
    trainer, _ = make_trainer(tmp_path, range(10), cfg=train_cfg(max_steps=2))
    trainer.train()
    records = read_metrics(tmp_path, "train")
    assert records and all(r["memory/encoder_ratio"] == 7.5 for r in records)
    assert "encoder_ratio=7.5" in (tmp_path / "train.log").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("memory/encoder_ratio")] == [7.5, 7.5]


def test_loss_divided_by_target_tokens_before_backward(tmp_path):
    trainer, model = make_trainer(tmp_path, range(10), cfg=train_cfg(max_steps=1))
    trainer.train()
    # d/dw of (w - 10)^2 * 4 / 4 at w = 0 is -20; one SGD step with lr 0.1 -> w = 2
    assert float(model.w.detach()) == pytest.approx(2.0)


def test_max_minutes_stops_with_a_checkpoint(tmp_path):
    trainer, _ = make_trainer(tmp_path, range(10), cfg=train_cfg(max_minutes=5))
    clock = iter([0.0, 4.0, 5.0, 5.0, 5.0, 5.0])  # minutes seen at start, after step 1, after step 2...
    trainer.elapsed_minutes = lambda: next(clock)
    summary = trainer.train()
    assert summary["stop_reason"] == "max_minutes" and summary["steps"] == 2
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint_path(tmp_path))["step"] == 2


def test_resuming_a_finished_run_does_no_more_updates(tmp_path):
    trainer, model = make_trainer(tmp_path, range(10), cfg=train_cfg(max_steps=2))
    trainer.train()
    again, again_model = make_trainer(tmp_path, range(10), cfg=train_cfg(max_steps=2))
    again.restore(ckpt.load_latest_good(tmp_path))
    summary = again.train()
    assert again_model.seen == [] and summary["stop_reason"] == "max_steps" and summary["steps"] == 2
    assert float(again_model.w.detach()) == float(model.w.detach())


def test_resume_continues_mid_epoch_with_the_next_batch(tmp_path):
    trainer, model = make_trainer(tmp_path, range(10), cfg=train_cfg(max_steps=4))
    trainer.train()
    assert model.seen == [10, 11, 12, 20]
    more, more_model = make_trainer(tmp_path, range(10), cfg=train_cfg(max_steps=6))
    more.restore(ckpt.load_latest_good(tmp_path))
    more.train()
    assert more_model.seen == [21, 22]


def test_logged_memory_figures_are_means_over_the_log_window(tmp_path):
    stats = TrainingStats(tmp_path, log_every=3, progress=False, echo=False, tensorboard=False)
    for step, ratio in enumerate([10.0, 20.0, 60.0, 5.0, 7.0, 9.0], start=1):
        stats.train_step(step, epoch=1, loss_sum=1.0, nll_sum=1.0, num_tokens=1, lr=0.1,
                         memory=[{"encoder_ratio": ratio}])
    stats.close()
    assert [r["memory/encoder_ratio"] for r in read_metrics(tmp_path, "train")] == [30.0, 7.0]


def test_validation_hypotheses_are_kept_per_step_and_examples_logged(tmp_path):
    trainer, _ = make_trainer(tmp_path, [], cfg=train_cfg(valid_every=2, max_steps=4),
                              batches_per_epoch=5)
    outputs = iter([ValidationOutput({"loss": 1.0, "bleu": 5.0}, hypotheses=["ein hund", ""],
                                     examples=[("a dog", "ein Hund", "ein hund")]),
                    ValidationOutput({"loss": 1.0, "bleu": 6.0}, hypotheses=["der hund", "x"])])
    trainer.validate_fn = lambda model: next(outputs)
    trainer.train()
    kept = sorted((tmp_path / "validations").iterdir())
    assert [p.name for p in kept] == ["step-00000002.txt", "step-00000004.txt"]
    assert kept[0].read_text(encoding="utf-8") == "ein hund\n\n"  # an empty hypothesis keeps its line
    assert kept[1].read_text(encoding="utf-8") == "der hund\nx\n"
    log = (tmp_path / "train.log").read_text()
    assert "example 1 source:     a dog" in log and "example 1 hypothesis: ein hund" in log
    assert "example 1 reference:  ein Hund" in log
    assert all("hypotheses" not in r for r in read_metrics(tmp_path, "valid"))

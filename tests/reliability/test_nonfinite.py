"""NaN/inf losses or gradients: the batch is skipped with a warning; too many in a row stop."""
import math
from dataclasses import dataclass, field

import pytest
import torch

from nmt.optim import LearningRateSchedule
from nmt.stats import TrainingStats, read_metrics
from nmt.training import Trainer, TrainingStopped
from revtoy import train_cfg


@dataclass
class Loss:
    loss: torch.Tensor
    nll: float
    num_tokens: int
    memory: dict = field(default_factory=dict)


class Batch:
    def __init__(self, value):
        self.value, self.num_tgt_tokens = value, 2

    def to(self, device):
        return self


class Model(torch.nn.Module):
    """loss = (w - value)^2; value 'nan' gives a NaN loss, 'badgrad' a finite loss with a NaN
    gradient (sqrt(|w - w|) = 0, its derivative is not finite)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_loss(self, batch, *, label_smoothing=0.0):
        self.seen.append((batch.value, float(self.w.detach())))
        if batch.value == "nan":
            loss = (self.w * float("nan")).sum()
        elif batch.value == "badgrad":
            loss = (self.w - self.w.detach()).abs().sqrt().sum()
        else:
            loss = ((self.w - batch.value) ** 2).sum()
        return Loss(loss, float(loss.detach()), 2)


def trainer_for(tmp_path, values, **cfg):
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25)
    trainer = Trainer(model=model, optimizer=optimizer,
                      schedule=LearningRateSchedule(optimizer, lr=0.25, schedule_type="constant"),
                      train_cfg=train_cfg(verify_reversal_every=0, max_epochs=1, max_steps=None,
                                          **cfg),
                      run_dir=tmp_path, stats=TrainingStats(tmp_path, log_every=1, progress=False,
                                                            echo=False, tensorboard=False),
                      epoch_batches=lambda epoch: [Batch(v) for v in values],
                      validate=lambda m: {"loss": 1.0, "bleu": 0.0},
                      static_payload={"config": {}, "tokenizer": torch.zeros(1, dtype=torch.uint8),
                                      "vocab_sizes": {"src": 1, "tgt": 1}})
    return trainer, model


def test_bad_batches_are_skipped_and_leave_the_parameters_alone(tmp_path):
    trainer, model = trainer_for(tmp_path, [1.0, "nan", "badgrad", 1.0], nonfinite_patience=3)
    summary = trainer.train()
    weights = [w for _, w in model.seen]
    assert weights[1] == weights[2] == weights[3] != 0.0  # no update from the skipped batches
    assert summary["steps"] == 2 and trainer.state.skipped_batches == 2
    assert trainer.state.nonfinite_in_a_row == 0  # reset by the good batch
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path, "train"))
    log = (tmp_path / "train.log").read_text()
    assert "warning: skipped epoch 1 batch 2 (after step 1): loss is nan (1 in a row)" in log
    assert "warning: skipped epoch 1 batch 3 (after step 1): gradient norm is nan (2 in a row)" in log
    assert torch.isfinite(model.w).all()


def test_too_many_in_a_row_stop_with_one_clear_line(tmp_path):
    trainer, model = trainer_for(tmp_path, [1.0, "nan", "badgrad", "nan", 1.0], nonfinite_patience=3)
    with pytest.raises(TrainingStopped) as caught:
        trainer.train()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("training stopped: 3 batches in a row had a non-finite loss or "
                              "gradient (last: epoch 1 batch 4 (after step 1), loss is nan; "
                              "train.nonfinite_patience=3)")
    assert len(model.seen) == 4  # the batch after the third bad one never ran


def test_clipping_still_applies_to_good_batches(tmp_path):
    trainer, model = trainer_for(tmp_path, [100.0], clip_grad_norm=1.0)
    trainer.train()
    assert float(model.w.detach()) == pytest.approx(0.25)  # gradient 200 clipped to norm 1, lr 0.25

"""train.accumulate: one update from the summed gradients of several batches."""
import random

import pytest
import torch

from nmt import checkpoint as ckpt
from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.data.batching import collate
from nmt.models.build import build_model
from nmt.optim import LearningRateSchedule
from nmt.stats import TrainingStats, read_metrics
from nmt.training import Trainer
from tests.training.test_trainer import make_trainer, train_cfg

VOCAB = 30


def test_groups_consecutive_batches_and_normalises_by_all_their_tokens(tmp_path):
    trainer, model = make_trainer(tmp_path, range(10), cfg=train_cfg(accumulate=2, max_steps=1))
    summary = trainer.train()
    assert model.seen == [10, 11] and summary["steps"] == 1
    # d/dw of ((w - 10)^2 * 4 + (w - 11)^2 * 4) / 8 at w = 0 is -21; SGD lr 0.1 -> w = 2.1
    assert float(model.w.detach()) == pytest.approx(2.1)
    (record,) = read_metrics(tmp_path, "train")
    assert record["tokens"] == 8 and record["loss"] == pytest.approx((400 + 484) / 8)


def test_memory_figures_of_an_update_are_the_mean_over_its_batches(tmp_path):
    trainer, model = make_trainer(tmp_path, range(10), cfg=train_cfg(accumulate=3, max_steps=1))
    original = model.training_loss

    def reporting(batch, **kwargs):
        output = original(batch, **kwargs)
        output.memory = {"encoder_ratio": float(batch.x)}  # 10, 11, 12
        return output

    model.training_loss = reporting
    trainer.train()
    (record,) = read_metrics(tmp_path, "train")
    assert record["memory/encoder_ratio"] == pytest.approx(11.0)  # not the last batch's 12


def test_an_epochs_last_update_takes_what_is_left_and_resume_regroups_the_same(tmp_path):
    trainer, model = make_trainer(tmp_path, range(10), cfg=train_cfg(accumulate=2, max_steps=3),
                                  batches_per_epoch=3)
    trainer.train()
    assert model.seen == [10, 11, 12, 20, 21]  # updates [10, 11], [12], [20, 21]
    latest = ckpt.load_checkpoint(ckpt.latest_checkpoint_path(tmp_path))
    assert latest["step"] == 3 and latest["training"]["state"]["batch_in_epoch"] == 2
    more, more_model = make_trainer(tmp_path, range(10), cfg=train_cfg(accumulate=2, max_steps=5),
                                    batches_per_epoch=3)
    more.restore(ckpt.load_latest_good(tmp_path))
    more.train()
    assert more_model.seen == [22, 30, 31]  # [22] ends epoch 2, then [30, 31]


def test_a_non_finite_batch_skips_its_whole_group(tmp_path):
    trainer, model = make_trainer(tmp_path, range(10), cfg=train_cfg(accumulate=2, max_steps=2,
                                                                      nonfinite_patience=5))
    original = model.training_loss

    def poisoned(batch, **kwargs):
        output = original(batch, **kwargs)
        if float(batch.x) == 11:
            output.loss = output.loss * float("nan")
        return output

    model.training_loss = poisoned
    summary = trainer.train()
    assert model.seen == [10, 11, 12, 20, 21]  # [10, 11] skipped, then [12], [20, 21]
    assert summary["steps"] == 2
    assert "batches 1-2" in (tmp_path / "train.log").read_text()


def _pairs(count, seed):
    rng = random.Random(seed)
    return [([rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 9))],
             [rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 9))]) for _ in range(count)]


def _config(cell, context, size):
    return ModelConfig(embedding_dim=12, dropout=0.0, init_uniform=0.3,
                       encoder=EncoderConfig(cell=cell, hidden=12, dropout=0.0),
                       decoder=DecoderConfig(cell=cell, hidden=12, dropout=0.0),
                       attention=AttentionConfig(context=context, size=size))


def _one_update(tmp_path, cell, context, size, batches, accumulate):
    torch.manual_seed(0)
    model = build_model(_config(cell, context, size), VOCAB, VOCAB)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = LearningRateSchedule(optimizer, lr=1.0, metric="loss", patience=10, factor=0.5)
    stats = TrainingStats(tmp_path, log_every=1, progress=False, echo=False, tensorboard=False)
    trainer = Trainer(model=model, optimizer=optimizer, schedule=schedule,
                      train_cfg=train_cfg(accumulate=accumulate, max_steps=1), run_dir=tmp_path,
                      stats=stats, epoch_batches=lambda epoch: batches,
                      validate=lambda m: {"loss": 1.0, "bleu": 0.0},
                      static_payload={"config": {}, "tokenizer": torch.zeros(1, dtype=torch.uint8),
                                      "vocab_sizes": {"src": VOCAB, "tgt": VOCAB}})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    return {name: before[name] - p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("cell,context,size", [("gru", "hidden", None), ("lstm", "hidden", None),
                                               ("revgru", "emb+slice", 4),
                                               ("revlstm", "emb+proj", 4)])
def test_accumulated_update_equals_one_update_on_the_merged_batch(tmp_path, cell, context, size):
    first, second = _pairs(5, seed=1), _pairs(3, seed=2)
    parts = [collate([s for s, _ in pairs], [t for _, t in pairs], list(range(len(pairs))))
             for pairs in (first, second)]
    merged = first + second
    whole = collate([s for s, _ in merged], [t for _, t in merged], list(range(len(merged))))
    accumulated = _one_update(tmp_path / "a", cell, context, size, parts, accumulate=2)
    single = _one_update(tmp_path / "b", cell, context, size, [whole], accumulate=1)
    separate = _one_update(tmp_path / "c", cell, context, size, parts[:1], accumulate=1)
    # equal up to float summation order (and, for reversible cells, fixed-point rounding that
    # depends on the batch's matrix shapes): far below what leaving out a batch changes
    gap = max(float((accumulated[name] - step).abs().max()) for name, step in single.items())
    without_second = max(float((separate[name] - step).abs().max()) for name, step in single.items())
    assert gap < 1e-5 and without_second > 1e-2, (gap, without_second)

"""TensorBoard event files hold the training and validation scalars, equal to metrics.jsonl."""
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nmt.stats import read_metrics
from training.toy import train_toy_model

TAGS = ("train/loss", "train/lr", "train/tokens_per_sec", "valid/loss", "valid/bleu", "valid/chrf")


def test_event_files_contain_the_scalars(tmp_path):
    run_dir = train_toy_model(tmp_path, max_steps=6, valid_every=3, log_every=2)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert set(TAGS) <= set(events.Tags()["scalars"])
    train = read_metrics(run_dir, "train")
    valid = read_metrics(run_dir, "valid")
    # every log_every steps, and a partial window closed at each validation (and checkpoint)
    assert [r["step"] for r in train] == [2, 3, 4, 6] and [r["step"] for r in valid] == [3, 6]
    for tag in TAGS:
        kind, name = tag.split("/")
        records = train if kind == "train" else valid
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [r["step"] for r in records], tag
        assert [s.value for s in scalars] == pytest.approx([r[name] for r in records], rel=1e-6), tag
    assert all(s.value > 0 for s in events.Scalars("train/tokens_per_sec"))

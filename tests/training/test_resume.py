"""Resume continues the same loss curve: in-process interruption and a SIGKILLed `nmt train`."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nmt.stats
from nmt import checkpoint as ckpt
from nmt.checkpoint import load_checkpoint, save_checkpoint, step_checkpoints
from nmt.config import config_from_dict
from nmt.errors import UserError
from nmt.run import train_from_config
from nmt.stats import read_metrics
from training.toy import toy_config, write_config

REPO = Path(__file__).resolve().parents[2]


def train_losses(run_dir) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir, "train")}


class Killed(Exception):
    pass


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_interrupted_run_resumes_on_the_same_curve(tmp_path, monkeypatch, device):
    reference = config_from_dict(toy_config(tmp_path / "a", max_steps=14, valid_every=5, device=device))
    train_from_config(reference, progress=False, echo=False)
    expected = train_losses(reference.run_dir)
    assert sorted(expected) == list(range(1, 15))

    config = config_from_dict(toy_config(tmp_path / "b", max_steps=14, valid_every=5, device=device))
    original = nmt.stats.TrainingStats.train_step

    def die_at_step_12(self, step, **kwargs):
        if step == 12:  # after the step-10 checkpoint, before the next one
            raise Killed()
        return original(self, step, **kwargs)

    monkeypatch.setattr(nmt.stats.TrainingStats, "train_step", die_at_step_12)
    with pytest.raises(Killed):
        train_from_config(config, progress=False, echo=False)
    monkeypatch.setattr(nmt.stats.TrainingStats, "train_step", original)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint_path(config.run_dir))["step"] == 10

    summary = train_from_config(config, resume=True, progress=False, echo=False)
    assert summary["steps"] == 14
    resumed = train_losses(config.run_dir)
    assert sorted(resumed) == list(range(1, 15))  # records of the lost steps 11 were dropped
    for step in range(1, 15):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(Path(config.run_dir) / "tensorboard"))
    events.Reload()  # the killed run's steps 11 are purged, not shown twice
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 15))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [expected[step] for step in range(1, 15)], abs=1e-6)
    valid = {r["step"]: r["loss"] for r in read_metrics(config.run_dir, "valid")}
    assert valid == pytest.approx({r["step"]: r["loss"] for r in read_metrics(reference.run_dir, "valid")})


def test_fresh_run_refuses_a_run_dir_with_checkpoints(tmp_path):
    config = config_from_dict(toy_config(tmp_path, max_steps=2, valid_every=2))
    train_from_config(config, progress=False, echo=False)
    with pytest.raises(UserError, match="--resume"):
        train_from_config(config, progress=False, echo=False)


def test_resume_rejects_a_changed_model(tmp_path):
    values = toy_config(tmp_path, max_steps=2, valid_every=2)
    train_from_config(config_from_dict(values), progress=False, echo=False)
    values["model"]["decoder"]["hidden"] = 8
    with pytest.raises(UserError, match="model.decoder.hidden"):
        train_from_config(config_from_dict(values), resume=True, progress=False, echo=False)


def test_resume_names_both_values_and_knows_what_older_checkpoints_trained_with(tmp_path):
    """A checkpoint written before model.readout_dropout existed trained with 'sequence': resuming
    it under today's default ('step') is refused with both values named; setting it resumes."""
    values = toy_config(tmp_path, max_steps=2, valid_every=2)
    train_from_config(config_from_dict(values), progress=False, echo=False)
    for path in step_checkpoints(values["run_dir"]):
        payload = load_checkpoint(path)
        del payload["config"]["model"]["readout_dropout"]  # as checkpoints of older versions lack it
        save_checkpoint(path, payload)
    with pytest.raises(UserError, match=r"model.readout_dropout \(checkpoint: 'sequence', config: 'step'\)"):
        train_from_config(config_from_dict(values), resume=True, progress=False, echo=False)
    values["model"]["readout_dropout"] = "sequence"
    values["train"]["max_steps"] = 3
    train_from_config(config_from_dict(values), resume=True, progress=False, echo=False)
    assert max(train_losses(values["run_dir"])) == 3


def test_checkpoints_older_than_the_kernels_setting_resume_and_kernels_may_change(tmp_path):
    """model.reversible.kernels / fused_activations / fused_products arrived after some runs: their
    checkpoints resume under the defaults, and the kernel path (how a step runs) may change."""
    values = toy_config(tmp_path, max_steps=2, valid_every=2)
    train_from_config(config_from_dict(values), progress=False, echo=False)
    for path in step_checkpoints(values["run_dir"]):
        payload = load_checkpoint(path)
        for key in ("kernels", "fused_activations", "fused_products", "readout_steps"):
            del payload["config"]["model"]["reversible"][key]
        save_checkpoint(path, payload)
    values["train"]["max_steps"] = 3
    train_from_config(config_from_dict(values), resume=True, progress=False, echo=False)
    values["model"].setdefault("reversible", {})["kernels"] = "torch"
    values["train"]["max_steps"] = 4
    train_from_config(config_from_dict(values), resume=True, progress=False, echo=False)
    assert max(train_losses(values["run_dir"])) == 4


def test_sigkilled_nmt_train_resumes_on_the_same_curve(tmp_path):
    """`nmt train` killed with SIGKILL after a checkpoint, resumed: same loss at a later step."""
    final_step = 24
    reference = config_from_dict(toy_config(tmp_path / "ref", max_steps=final_step, valid_every=4))
    train_from_config(reference, progress=False, echo=False)
    expected = train_losses(reference.run_dir)

    # the killed run would go on for much longer; its resume stops at the reference's last step
    values = toy_config(tmp_path / "run", max_steps=5000, valid_every=4)
    config_path = write_config(tmp_path, values)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    command = [sys.executable, "-m", "nmt", "train", str(config_path), "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    run_dir = Path(values["run_dir"])
    deadline = time.time() + 120
    while not ckpt.step_checkpoints(run_dir) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    killed_at = ckpt.load_latest_good(run_dir)["step"]  # latest.pt may not be linked yet
    assert 4 <= killed_at < final_step

    values["train"]["max_steps"] = final_step
    write_config(tmp_path, values)
    result = subprocess.run(command + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stderr
    resumed = train_losses(run_dir)
    assert sorted(resumed) == list(range(1, final_step + 1))
    assert abs(resumed[final_step] - expected[final_step]) < 1e-5
    for step in range(killed_at + 1, final_step + 1):
        assert abs(resumed[step] - expected[step]) < 1e-5, step


def test_ctrl_c_mid_update_checkpoints_the_last_step_and_resumes_exactly(tmp_path, monkeypatch):
    from nmt.models.seq2seq import Seq2Seq

    reference = config_from_dict(toy_config(tmp_path / "a", max_steps=10, valid_every=4))
    train_from_config(reference, progress=False, echo=False)
    expected = train_losses(reference.run_dir)

    config = config_from_dict(toy_config(tmp_path / "b", max_steps=10, valid_every=4))
    original = Seq2Seq.training_loss
    calls = []

    def interrupted_in_update_7(self, batch, **kwargs):
        output = original(self, batch, **kwargs)  # dropout has drawn its random numbers
        calls.append(self.training)
        if self.training and sum(calls) == 7:
            raise KeyboardInterrupt
        return output

    monkeypatch.setattr(Seq2Seq, "training_loss", interrupted_in_update_7)
    with pytest.raises(KeyboardInterrupt):
        train_from_config(config, progress=False, echo=False)
    monkeypatch.setattr(Seq2Seq, "training_loss", original)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint_path(config.run_dir))["step"] == 6

    train_from_config(config, resume=True, progress=False, echo=False)
    resumed = train_losses(config.run_dir)
    assert sorted(resumed) == list(range(1, 11))
    for step in range(1, 11):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step

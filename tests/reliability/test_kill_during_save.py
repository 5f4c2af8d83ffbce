"""SIGKILL while a checkpoint is half-written: the run resumes from the last complete checkpoint,
loses only the steps after it, and continues on the same loss curve."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nmt import checkpoint as ckpt
from nmt.config import config_from_dict
from nmt.run import train_from_config
from nmt.stats import read_metrics
from training.toy import toy_config, write_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FINAL_STEP = 12


def train_losses(run_dir) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir, "train")}


def test_sigkill_during_a_checkpoint_write_then_resume(tmp_path):
    reference = config_from_dict(toy_config(tmp_path / "ref", max_steps=FINAL_STEP, valid_every=4))
    train_from_config(reference, progress=False, echo=False)
    expected = train_losses(reference.run_dir)

    values = toy_config(tmp_path / "run", max_steps=FINAL_STEP, valid_every=4)
    config_path = write_config(tmp_path, values)
    run_dir = Path(values["run_dir"])
    marker = tmp_path / "stalled"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, str(HERE / "killable_train.py"), str(config_path),
                                ".step-00000008.pt", str(marker)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL and marker.exists(), stderr.decode()[-2000:]

    # killed mid-write: a half-written temporary, the step-4 checkpoint intact, no step-8 one
    temporaries = list(ckpt.checkpoint_dir(run_dir).glob(".step-00000008.pt.*.tmp"))
    assert len(temporaries) == 1 and temporaries[0].stat().st_size > 0
    assert [p.name for p in ckpt.step_checkpoints(run_dir)] == ["step-00000004.pt"]
    assert max(train_losses(run_dir)) == 8  # steps 5..8 were trained, and will be redone

    result = subprocess.run([sys.executable, "-m", "nmt", "train", str(config_path), "--resume",
                             "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "warning" not in result.stderr
    assert f"resumed from {ckpt.step_checkpoint_path(run_dir, 4)} at step 4" in result.stderr
    assert not list(ckpt.checkpoint_dir(run_dir).glob("*.tmp"))  # the torn file was cleaned up
    resumed = train_losses(run_dir)
    assert sorted(resumed) == list(range(1, FINAL_STEP + 1))  # each step logged once
    for step in range(1, FINAL_STEP + 1):
        assert abs(resumed[step] - expected[step]) < 1e-5, step
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint_path(run_dir))["step"] == FINAL_STEP

"""`nmt train --max-epochs/--max-minutes`: the recipe's budget replaces the config's, file untouched."""
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.commands.train import apply_budget_overrides
from nmt.config import config_from_dict
from nmt.errors import UserError
from training.toy import toy_config, write_config

REPO = Path(__file__).resolve().parents[2]


def config(tmp_path, **train):
    return config_from_dict(toy_config(tmp_path, max_epochs=50, max_minutes=60.0, **train))


def test_overrides_replace_the_budget(tmp_path):
    untouched = apply_budget_overrides(config(tmp_path))
    assert (untouched.train.max_epochs, untouched.train.max_minutes) == (50, 60.0)
    epochs = apply_budget_overrides(config(tmp_path), max_epochs=3, max_minutes="none")
    assert (epochs.train.max_epochs, epochs.train.max_minutes) == (3, None)
    minutes = apply_budget_overrides(config(tmp_path), max_minutes=2.5)
    assert (minutes.train.max_epochs, minutes.train.max_minutes) == (50, 2.5)


def test_invalid_override_names_the_flag(tmp_path):
    with pytest.raises(UserError, match=r"^--max-epochs: must be at least 1, got 0$"):
        apply_budget_overrides(config(tmp_path), max_epochs=0)
    with pytest.raises(UserError, match=r"^--max-minutes: must be positive"):
        apply_budget_overrides(config(tmp_path), max_minutes=-1.0)


@pytest.mark.parametrize("flags, message", [
    (["--max-minutes", "soon"], "expected minutes or 'none', got 'soon'"),
    (["--max-epochs", "0"], "--max-epochs: must be at least 1, got 0"),
])
def test_bad_budget_flags_fail_before_training(tmp_path, flags, message):
    path = write_config(tmp_path, toy_config(tmp_path))
    done = subprocess.run([sys.executable, "-m", "nmt", "train", str(path), *flags], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "run").exists()

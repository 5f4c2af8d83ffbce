import os
from pathlib import Path

# Triton's kernels run on CPU tensors under its interpreter; the variable must be set before
# anything imports triton (its own library functions are interpreted only then).
if os.environ.get("REVNMT_TRITON_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two shared cores: keep each test process on one thread so parallel work stays predictable.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """Multi30K task 1 raw data (MULTI30K_DIR, else ../shared/multi30k next to the repo)."""
    path = Path(os.environ.get("MULTI30K_DIR", REPO.parent / "shared" / "multi30k"))
    if not (path / "train.en.gz").exists() and not (path / "train.en").exists():
        pytest.fail(f"Multi30K not found in {path}: set MULTI30K_DIR")
    return path

"""The English->French and English->Czech recipes differ from the German GRU one only in language."""
from pathlib import Path

import pytest

from nmt.config import load_config
from nmt.data.files import check_data_files

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "multi30k"


@pytest.mark.parametrize("tgt", ["fr", "cs"])
def test_language_config_changes_only_the_target_language(tgt, multi30k_dir, monkeypatch):
    monkeypatch.setenv("MULTI30K_DIR", str(multi30k_dir))
    german = load_config(CONFIGS / "gru.yaml").to_dict()
    other = load_config(CONFIGS / f"gru-en-{tgt}.yaml")
    assert other.data.src == "en" and other.data.tgt == tgt
    assert other.name == f"multi30k-gru-en-{tgt}" and other.run_dir == f"runs/multi30k-gru-en-{tgt}"
    changed = other.to_dict()
    for key in ("name", "run_dir"):
        changed[key] = german[key]
    changed["data"]["tgt"] = "de"
    assert changed == german
    files = check_data_files(other, ["train", "valid", "test"])
    assert files["test"][1].name == f"test_2016_flickr.{tgt}.gz"

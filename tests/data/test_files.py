import pytest

from nmt.config import config_from_dict
from nmt.data.files import check_data_files, data_file
from nmt.errors import ConfigError


def test_check_data_files(tmp_path):
    (tmp_path / "train.en").write_text("a\n")
    (tmp_path / "train.de.gz").write_bytes(b"")
    (tmp_path / "val.en").write_text("a\n")
    config = config_from_dict({"data": {"dir": str(tmp_path)}})
    files = check_data_files(config, ["train"])
    assert files["train"] == (tmp_path / "train.en", tmp_path / "train.de.gz")
    with pytest.raises(ConfigError, match=r"^data\.valid: neither .*val\.de nor .*val\.de\.gz exists"):
        check_data_files(config, ["train", "valid"])
    (tmp_path / "train.de").write_text("plain wins\n")
    assert data_file(config.data, "train", "de") == tmp_path / "train.de"
    missing = config_from_dict({"data": {"dir": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match=r"^data\.dir: directory .*nope does not exist"):
        check_data_files(missing, ["test"])

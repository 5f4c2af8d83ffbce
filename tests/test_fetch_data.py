"""data/fetch_multi30k.py: skips complete directories, fails with one line without network."""
import importlib.util
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("fetch_multi30k", REPO / "data" / "fetch_multi30k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_complete_directory_is_not_downloaded(multi30k_dir, monkeypatch, capsys):
    fetch = _load()

    def no_network(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert fetch.main(["fetch", str(multi30k_dir)]) == 0
    assert "complete" in capsys.readouterr().out


def test_without_network_one_line_says_what_to_set(tmp_path, monkeypatch, capsys):
    fetch = _load()

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert fetch.main(["fetch", str(tmp_path / "m30k")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MULTI30K_DIR" in err
    assert not list((tmp_path / "m30k").glob("*.gz"))  # nothing half-written

"""recipes/plot_peak_memory.py on a tiny config: the measurement always, the drawing only if
matplotlib is there."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "recipes" / "plot_peak_memory.py"
CONFIG = REPO / "configs" / "multi30k" / "revgru-emb20h.yaml"
TINY = ["model.encoder.hidden=16", "model.decoder.hidden=16", "model.embedding_dim=16",
        "model.attention.size=4", "data.tokenizer.vocab_size=64", "model.reversible.chunk_steps=2"]

spec = importlib.util.spec_from_file_location("plot_peak_memory", SCRIPT)
plot_peak_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_peak_memory)


def _args(tmp_path, *extra):
    argv = ["--config", str(CONFIG), "--lengths", "6,40", "--batch", "2",
            "--out", str(tmp_path / "peak.png"), "--json", str(tmp_path / "peak.json"), "--quiet"]
    for item in TINY:
        argv += ["--set", item]
    return argv + list(extra)


def test_measures_three_ways_growing_with_length(tmp_path):
    assert plot_peak_memory.main(_args(tmp_path, "--no-plot")) == 0
    result = json.loads((tmp_path / "peak.json").read_text())
    assert not (tmp_path / "peak.png").exists()
    assert result["lengths"] == [6, 40] and result["batch"] == 2
    assert result["chunk"] == "chunk_steps=2"
    for way in ("reversible", "plain", "checkpointed"):
        rows = result["ways"][way]
        assert [row["length"] for row in rows] == [6, 40]
        for row in rows:
            assert row["peak_step_bytes"] > 0
            assert row["peak_total_bytes"] == row["resident_bytes"] + row["peak_step_bytes"]
        summary = result["summary_mib"][way]
        assert len(summary["peak_step_mib"]) == len(summary["peak_total_mib"]) == 2
    plain = result["ways"]["plain"]
    assert plain[1]["peak_step_bytes"] > plain[0]["peak_step_bytes"]
    assert plain[1]["peak_total_bytes"] > plain[0]["peak_total_bytes"]
    # the plain model keeps every step's activations; at 40 steps it is above the reversible one
    assert result["ways"]["reversible"][1]["peak_step_bytes"] < plain[1]["peak_step_bytes"]


def test_draws_png(tmp_path):
    pytest.importorskip("matplotlib")
    assert plot_peak_memory.main(_args(tmp_path)) == 0
    png = (tmp_path / "peak.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "peak.json").read_text())["lengths"] == [6, 40]
    # --replot redraws from the JSON without measuring
    again = tmp_path / "again.png"
    replot = ["--replot", str(tmp_path / "peak.json"), "--out", str(again)]
    assert plot_peak_memory.main(replot) == 0
    assert again.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot_peak_memory.main(_args(tmp_path)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "pip install -e '.[plots]'" in error
    assert not (tmp_path / "peak.json").exists()


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert plot_peak_memory.main(_args(tmp_path, "--no-plot", "--lengths", "1")) == 2
    assert "--lengths" in capsys.readouterr().err

"""The README's Python snippets run as written (on a tiny checkpoint instead of a Multi30K one)."""
import re
from pathlib import Path

import pytest
import torch

from training.toy import train_toy_model

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return train_toy_model(tmp_path_factory.mktemp("readme")) / "best.pt"


def test_readme_has_the_translation_and_core_snippets():
    snippets = python_snippets()
    assert any("load_translator" in code for code in snippets)
    assert any("ReversibleRNN" in code for code in snippets)


def test_reversible_core_snippet_runs(capsys):
    (code,) = [code for code in python_snippets() if "ReversibleRNN" in code]
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), {})
    ratio = float(re.search(r"memory: ([0-9.]+)x", capsys.readouterr().out).group(1))
    assert ratio > 5


def test_translation_snippet_runs(tiny_checkpoint, capsys):
    (code,) = [code for code in python_snippets() if "load_translator" in code]
    code = code.replace('"runs/multi30k-revgru-emb20h/best.pt"', repr(str(tiny_checkpoint)))
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out.strip()
    translations = eval(printed)  # the printed list of two strings
    assert isinstance(translations, list) and len(translations) == 2
    assert all(isinstance(text, str) for text in translations)


def test_ci_runs_the_readme_install_and_test_commands():
    """`.ci/run` takes its commands from the README, so the newcomer's path is the tested path."""
    import subprocess

    printed = subprocess.run(["bash", str(README.parent / ".ci" / "run"), "--print-commands"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert printed == ["pip install torch==2.13.0", "pip install -e '.[test]'",
                       'MULTI30K_DIR="$MULTI30K_DIR" python -m pytest -q tests']
    install = README.read_text(encoding="utf-8").split("## Install and test", 1)[1]
    assert "python3 -m venv .venv" in install and ". .venv/bin/activate" in install

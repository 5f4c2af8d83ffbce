import subprocess
import sys

from nmt.cli import build_parser


def test_parser_lists_commands():
    help_text = build_parser().format_help()
    assert "bench" in help_text


def test_python_dash_m_runs():
    result = subprocess.run([sys.executable, "-m", "nmt", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "usage: nmt" in result.stdout

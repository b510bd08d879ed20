"""The codebase's shape (benchmarks/code_size.py): the files one DPO step runs through stay within 1,600 code
lines with no function over 100 lines, no import cycle among our modules, and nothing shipped cites a
document outside the repository."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_code_size():
    spec = importlib.util.spec_from_file_location("code_size", ROOT / "benchmarks" / "code_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shape_limits_hold(capsys):
    assert load_code_size().main() == 0, capsys.readouterr().out


def test_cycle_finder_finds_a_cycle():
    cycles = load_code_size().cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles == [["a", "b", "c"]]


def test_code_lines_leave_out_docstrings_comments_and_blanks():
    source = '"""doc\nstring"""\nimport os  # a comment\n\n# only a comment\ndef f():\n    """doc"""\n    return 1\n'
    assert load_code_size().code_lines(source) == 3  # import os, def f():, return 1

"""The recipe tools' shared command-line conventions: `run_tool` and `dims_arg` (tools/_common.py)."""
from __future__ import annotations

import argparse

import pytest

from netcompress.tools._common import ToolError, dims_arg, run_tool


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netcompress demo")
    p.add_argument("path")
    p.add_argument("--input", type=dims_arg("1,28,28", 3), default=None)
    return p


def test_run_tool_returns_the_body_code_and_none_as_0():
    seen = []
    assert run_tool(_parser(), ["x", "--input", "1,28,28"], lambda a: seen.append(a) or 3) == 3
    assert seen[0].path == "x" and seen[0].input == (1, 28, 28)
    assert run_tool(_parser(), ["x"], lambda a: None) == 0


def test_run_tool_help_and_usage_errors_return_argparse_codes(capsys):
    assert run_tool(_parser(), ["--help"], lambda a: 9) == 0
    assert "usage: netcompress demo" in capsys.readouterr().out
    assert run_tool(_parser(), [], lambda a: 9) == 2  # the missing positional
    assert "the following arguments are required: path" in capsys.readouterr().err
    assert run_tool(_parser(), ["x", "--input", "1,28"], lambda a: 9) == 2
    assert "expected C,H,W (e.g. 1,28,28), got '1,28'" in capsys.readouterr().err


def test_run_tool_reports_input_errors_on_one_line(capsys):
    def body(a):
        print("progress")
        raise ToolError(f"{a.path}: not a caffemodel")

    assert run_tool(_parser(), ["w.caffemodel"], body) == 1
    out = capsys.readouterr()
    assert out.out == "progress\n" and out.err == "Error: w.caffemodel: not a caffemodel\n"
    assert run_tool(_parser(), ["nope"], lambda a: open("/nonexistent/nope")) == 1
    assert capsys.readouterr().err.startswith("Error: [Errno 2]")
    with pytest.raises(ValueError):  # not one of `errors`: a bug propagates (the CLI boundary reports it)
        run_tool(_parser(), ["x"], lambda a: int("abc"))
    assert run_tool(_parser(), ["x"], lambda a: int("abc"), errors=(ValueError,)) == 1
    with pytest.raises(SystemExit):  # only parse_args' SystemExit becomes a return code
        run_tool(_parser(), ["x"], lambda a: exit(4))


@pytest.mark.parametrize("text,count,expected", [
    ("3,32,32", 3, (3, 32, 32)), ("3,32,32", None, (3, 32, 32)), ("10", None, (10,)),
    ("3,32", 3, "expected C,H,W"), ("a,b,c", None, "expected C,H,W"), ("3,0,32", None, "expected positive"),
    ("", None, "expected C,H,W"),
])
def test_dims_arg(text, count, expected):
    parse = dims_arg("3,32,32", count)
    if isinstance(expected, tuple):
        assert parse(text) == expected
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=expected):
            parse(text)

"""A user's mistake ends in one `jointobj: error:` line and exit status 2 (traceback in a named log file, or shown
with --debug); a bug keeps its traceback."""

import re
import sys

import pytest

import jointobj.cli.eval as eval_command
from jointobj.cli import console_main
from jointobj.utils.errors import UserError, is_user_error, run_command


def run_console(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["jointobj", *argv])
    return console_main()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "jointobj: error:" in line]


def test_a_missing_model_directory_is_one_line_naming_the_log(monkeypatch, tmp_path, capsys):
    # Fails against the old console entry: FileNotFoundError is no ValueError, so it printed a 25-line traceback.
    code = run_console(monkeypatch, "eval", "--model", "runs/nope", "--toyset", "likes_tennis", "--decoder", "l2r",
                       "--json", str(tmp_path / "x.json"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("jointobj: error: model directory runs/nope does not exist")
    log = re.search(r"\(traceback: (\S+); --debug shows it\)", line).group(1)
    assert "Traceback" in open(log).read()


def test_debug_shows_the_traceback_instead(monkeypatch, tmp_path, capsys):
    code = run_console(monkeypatch, "eval", "--debug", "--model", "runs/nope", "--toyset", "likes_tennis",
                       "--decoder", "l2r", "--json", str(tmp_path / "x.json"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and len(error_lines(err)) == 1 and "--debug shows it" not in err


def test_only_rank_zero_prints(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "1")
    code = run_console(monkeypatch, "eval", "--oracle", "--toyset", "likes_tenis", "--decoder", "l2r", "--json",
                       str(tmp_path / "x.json"))
    assert code == 2 and capsys.readouterr().err == ""


def test_bugs_keep_their_traceback(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(eval_command, "evaluate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run_console(monkeypatch, "eval", "--oracle", "--toyset", "likes_tennis", "--decoder", "l2r", "--json",
                    str(tmp_path / "x.json"))


def test_which_errors_are_the_users():
    def raise_here(error):
        raise error

    for error, users in [(UserError("x"), True), (RuntimeError("x"), False), (KeyError("x"), False)]:
        try:
            raise_here(error)
        except Exception as caught:
            assert is_user_error(caught) is users
    try:
        raise_here(ValueError("raised outside jointobj, e.g. inside torch"))
    except ValueError as caught:
        assert not is_user_error(caught)
    from jointobj.utils.registry import Registry

    try:
        Registry("thing").get("nope")
    except ValueError as caught:
        assert is_user_error(caught)


def test_run_command_returns_zero_on_success_and_strips_only_a_bare_debug():
    seen = []
    assert run_command(seen.append, ["--debug", "--x", "1"]) == 0
    assert run_command(seen.append, ["--debug", "underflow_overflow"]) == 0  # TrainingArguments' own --debug VALUE
    assert seen == [["--x", "1"], ["--debug", "underflow_overflow"]]

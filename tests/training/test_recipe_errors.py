"""A user's mistake in a recipe ends in one `jointobj: error:` line, under `python` and the two-rank `deepspeed`
launch alike: no traceback (it goes to a log file the line names), a non-zero exit, printed once (rank 0).

Fails against the old recipes: every one of these ended in a traceback (two, one per rank, under DeepSpeed).
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jointobj.training.recipe import run_recipe
from jointobj.utils.errors import run_command

from helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "recipes" / "configs" / "logsum.yaml"


def quick(output_dir: Path) -> list[str]:
    return ["--output_dir", str(output_dir), "--deepspeed", "", "--max_steps", "1", "--save_strategy", "no",
            "--report_to", "none"]


MISTAKES = {
    "negative report samples": (["--report_samples", "-5"], r"report_samples must be >= 0"),
    "unknown set": (["--dataset", "likes_tenis"], r"unknown toy set 'likes_tenis'; .*did you mean likes_tennis\?"),
    "not a number": (["--learning_rate", "abc"], r"--learning_rate/--learning-rate: invalid float value: 'abc'"),
    "missing model": (["--model_name_or_path", "models/nowhere"], r"model directory .*nowhere does not exist"),
    "typo in a set reference": (["--dataset", "errsets:ring"], r"has no attribute 'ring'; did you mean errsets:rings"),
    "probabilities": (["--dataset", "badsets:odd"], r"building the sets of module 'badsets' failed: toy set 'odd': "
                                                    r"the probabilities sum to 0.9"),
}


@pytest.fixture
def user_sets(tmp_path, monkeypatch):
    from jointobj.toysets.builtin import resolve_toyset_reference

    (tmp_path / "errsets.py").write_text(textwrap.dedent("""
        from jointobj.toysets.user_sets import make_toyset
        rings = make_toyset("rings", {"gold ring": 0.5, "silver ring": 0.5})
        _private = rings
    """))
    (tmp_path / "badsets.py").write_text(textwrap.dedent("""
        from jointobj.toysets.user_sets import make_toyset
        odd = make_toyset("odd", {"gold ring": 0.5, "silver ring": 0.4})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    resolve_toyset_reference.cache_clear()
    yield tmp_path
    resolve_toyset_reference.cache_clear()


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_is_one_line(mistake, user_sets, tmp_path, capsys):
    flags, message = MISTAKES[mistake]
    code = run_command(lambda argv: run_recipe(argv, CONFIG), [*quick(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("jointobj: error: ") and "--debug shows it" in line
    assert re.search(message, line), line
    assert "--model_name_or_path DIR to fine-tune" not in line and "_private" not in line


def test_an_output_dir_holding_a_run_is_one_line(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter_config.json").write_text("{}")
    code = run_command(lambda argv: run_recipe(argv, CONFIG),
                       ["--model_name_or_path", str(tiny_model_dir), *quick(tmp_path / "out")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith(f"jointobj: error: output_dir {tmp_path / 'out'} already holds a run")


def launch(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow  # a fresh interpreter
def test_python_recipe_mistake_is_one_line(tmp_path):
    run = launch([sys.executable, str(ROOT / "recipes" / "logsum.py"), "--report_samples", "-5",
                  *quick(tmp_path / "out")], tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert [line for line in output.splitlines() if "jointobj: error:" in line] == [
        line for line in run.stderr.splitlines() if line.startswith("jointobj: error: report_samples must be >= 0")]


@pytest.mark.slow  # two launched ranks
@pytest.mark.parametrize("flags", [["--report_samples", "-5"], ["--dataset", "errsets:ring"]])
def test_deepspeed_two_rank_mistake_is_one_line(flags, user_sets, tmp_path):
    run = launch([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                  str(free_port()), str(ROOT / "recipes" / "logsum.py"), "--deepspeed",
                  str(ROOT / "ds_configs" / "zero2.json"), *quick(tmp_path / "out")[4:], "--output_dir",
                  str(tmp_path / "out"), *flags], user_sets)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in output, output[-4000:]
    lines = [line for line in output.splitlines() if "jointobj: error:" in line]
    assert len(lines) == 1, output[-4000:]

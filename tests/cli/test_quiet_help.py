"""Quiet, true help: examples keep their line breaks, every subcommand takes --no-progress, and a CLI
run over a LoRA adapter raises no FutureWarning from jointobj's own calls (peft's read of
`is_gradient_checkpointing`, deprecated in transformers 5)."""

import io
import re
import tokenize
import warnings
from pathlib import Path

import pytest

from jointobj.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


def test_eval_help_keeps_the_examples_line_breaks(capsys):
    # Fails while the docstring is not raw: "\" + newline joins the example's lines into one.
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    shown = capsys.readouterr().out
    assert "--toyset likes_tennis,cities,shuffle_3 \\\n        --decoder random,l2r" in shown


def _continued_lines(path: Path) -> list[int]:
    """Lines of non-raw triple-quoted strings where a backslash ends a line (Python joins the lines)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        prefix = re.match(r"[a-zA-Z]*", token.string).group().lower()
        triple = token.string[len(prefix):].startswith(('"""', "'''"))
        if token.type == tokenize.STRING and triple and "r" not in prefix:
            if re.search(r"(?<!\\)(\\\\)*\\\n", token.string):
                found.append(token.start[0])
    return found


def test_no_docstring_joins_its_example_lines():
    files = [*ROOT.glob("jointobj/**/*.py"), *ROOT.glob("eval/*.py"), *ROOT.glob("recipes/*.py")]
    joined = {str(p.relative_to(ROOT)): lines for p in files if (lines := _continued_lines(p))}
    assert not joined, f"make these strings raw (r\"\"\"), their examples lose their line breaks: {joined}"


@pytest.mark.parametrize("name", sorted(set(SUBCOMMANDS) - {"lm-eval"}))
def test_every_subcommand_takes_no_progress(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    assert "--no-progress" in capsys.readouterr().out


def test_no_progress_switches_off_the_bars_of_libraries_already_imported(monkeypatch):
    # Fails if only TQDM_DISABLE is set: tqdm read the environment when it was imported, long before.
    import tqdm.std
    from transformers.utils import logging as transformers_logging

    from jointobj.cli.progress import take_no_progress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(tqdm.std.tqdm, "__init__", tqdm.std.tqdm.__dict__["__init__"])  # restored after
    try:
        assert take_no_progress(["--tasks", "x", "--no-progress"]) == ["--tasks", "x"]
        assert not transformers_logging.is_progress_bar_enabled()
        assert tqdm.std.tqdm(range(3)).disable  # lm-eval's bars pass no `disable` of their own
        import os

        assert os.environ["TQDM_DISABLE"] == "1"  # jointobj's sampling loop reads it at each sweep
    finally:
        transformers_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def tiny_adapter_dir(tmp_path_factory):
    from peft import LoraConfig

    from jointobj.model.denoiser import Denoiser

    from helpers import save_tiny_toy_model

    base = save_tiny_toy_model(tmp_path_factory.mktemp("base"))
    out = tmp_path_factory.mktemp("adapter")
    Denoiser.from_pretrained(base).add_lora(LoraConfig(r=2, target_modules=["Wqkv"])).save_pretrained(out)
    return out


def test_a_cli_run_on_an_adapter_raises_no_future_warning(tiny_adapter_dir, tmp_path, monkeypatch, capsys):
    # Fails while peft's is_gradient_checkpointing read reaches transformers 5 unfiltered (every eval / generate).
    monkeypatch.setattr("sys.stdin", io.StringIO("<cities>\n"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        main(["eval", "--model", str(tiny_adapter_dir), "--toyset", "cities", "--decoder", "l2r", "--samples", "8",
              "--json", str(tmp_path / "e.json"), "--no-progress"])
        main(["generate", "--model", str(tiny_adapter_dir), "--gen-length", "2", "--no-progress"])
    assert "cities" in capsys.readouterr().out

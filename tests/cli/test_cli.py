"""The `jointobj` console command: subcommands listed, each with --help, bad input refused
clearly; `jointobj generate` on the exact oracle (stop strings, EOS) and on a saved tiny model."""

import io
import subprocess
import sys

import pytest

from jointobj.cli import SUBCOMMANDS, console_main, main
from jointobj.evaluation.generation import cut_at_stop, generate_texts
from jointobj.toysets.oracle import OracleDenoiser


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    printed = capsys.readouterr().out
    assert all(f"  {name}" in printed for name in ("eval", "generate", "probe", "bench", "lm-eval"))


@pytest.mark.parametrize("name", sorted(set(SUBCOMMANDS) - {"lm-eval"}))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0 and f"usage: jointobj {name}" in capsys.readouterr().out


def test_lm_eval_subcommand_is_lm_evals_own_command_line(capsys):
    pytest.importorskip("lm_eval")
    with pytest.raises(SystemExit) as done:
        main(["lm-eval", "run", "--help"])
    assert done.value.code == 0 and "--model_args" in capsys.readouterr().out
    from lm_eval.api.registry import get_model

    assert get_model("jointobj").__name__ == "JointObjLM"


def test_unknown_subcommand_lists_the_known_ones():
    with pytest.raises(SystemExit, match="unknown subcommand 'evaluate'; known: eval, generate, probe, bench"):
        main(["evaluate"])


def test_console_entry_prints_a_bad_request_without_a_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["jointobj", "eval", "--oracle", "--toyset", "nowhere_mod:sets", "--decoder",
                                      "random", "--tokens-per-step", "1", "--json", str(tmp_path / "x.json")])
    assert console_main() == 2
    assert "jointobj: error: toy set reference 'nowhere_mod:sets'" in capsys.readouterr().err


def test_cut_at_stop_cuts_before_the_earliest_stop_string():
    assert cut_at_stop("a b. c\n\nd", ["\n\n", "."]) == "a b"
    assert cut_at_stop("a b", ["x", ""]) == "a b"


def test_generate_texts_on_the_oracle_honours_stop_strings_and_eos():
    oracle = OracleDenoiser("likes_tennis")
    texts = generate_texts(oracle, ["<likes_tennis>"] * 40, "l2r", gen_length=3, seed=0)
    assert set(texts) == {"he likes apple", "i play tennis"}
    cut = generate_texts(oracle, ["<likes_tennis>"] * 40, "l2r", gen_length=3, stop=[" likes"], seed=0)
    assert [c for c in cut] == [("he" if t.startswith("he") else t) for t in texts]
    likes = oracle.tokenizer.convert_tokens_to_ids("likes")
    at_eos = generate_texts(oracle, ["<likes_tennis>"] * 40, "l2r", gen_length=3, seed=0, eos_token_id=likes)
    assert at_eos == cut


def test_generate_reads_stdin_and_writes_a_line_per_prompt(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("<cities>\n\n<likes_tennis>\n"))
    texts = main(["generate", "--model", str(tiny_model_dir), "--decoder", "confidence", "--gen-length", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert len(texts) == 2 and lines == texts and all(len(t.split()) <= 3 for t in texts)


def test_generate_from_a_file_to_a_file(tiny_model_dir, tmp_path):
    (tmp_path / "prompts.txt").write_text("<cities>\n<agreement> this [SEP]\n")
    out = tmp_path / "answers.txt"
    main(["generate", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "prompts.txt"), "--decoder",
          "threshold", "--threshold", "0.5", "--tokens-per-step", "2", "--gen-length", "4", "--out", str(out)])
    assert len(out.read_text().splitlines()) == 2


def test_generate_refuses_an_empty_prompt_file(tiny_model_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts in .*empty.txt"):
        main(["generate", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "empty.txt"),
              "--gen-length", "3"])


@pytest.mark.slow
def test_the_installed_console_script_lists_its_subcommands():
    scripts = __import__("pathlib").Path(sys.executable).parent
    done = subprocess.run([str(scripts / "jointobj"), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "generate" in done.stdout and "bench" in done.stdout

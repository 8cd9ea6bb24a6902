"""`jointobj eval --model A --model B`: several models on one table, JSON and frontier (base and
fine-tuned side by side outside the recipe)."""

import json
import shutil

import pytest

from jointobj.cli import main


def test_two_models_share_one_run_table_and_frontier(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    rows = main(["eval", "--model", str(tiny_model_dir), "--model", str(other), "--compare-oracle", "--toyset",
                 "cities", "--decoder", "l2r", "--tokens-per-step", "1,all", "--samples", "16", "--json",
                 str(tmp_path / "rows.json"), "--frontier", str(tmp_path / "frontier.png"), "--no-progress"])
    assert [r["model"] for r in rows] == [str(tiny_model_dir)] * 2 + [str(other)] * 2
    written = json.loads((tmp_path / "rows.json").read_text())
    assert [r["model"] for r in written] == [r["model"] for r in rows] + ["oracle"] * 2
    shown = capsys.readouterr().out
    assert shown.splitlines()[0].split()[0] == "model" and f"{other}:" in shown  # a headline per model
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_the_same_model_twice_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="names a directory twice"):
        main(["eval", "--model", str(tiny_model_dir), "--model", str(tiny_model_dir), "--toyset", "cities",
              "--decoder", "l2r", "--json", str(tmp_path / "rows.json")])

"""The eval/ scripts run in-process on tiny inputs: their JSON carries the contract keys, the
PNGs exist, and bad names fail with the list of valid ones."""

import json
from pathlib import Path

import pytest

from jointobj.evaluation.report import format_table

from helpers import load_script

EVAL = Path(__file__).resolve().parents[2] / "eval"
CONTRACT = {"toyset", "decoder", "tokens_per_step", "samples", "validity", "tv", "tv_floor", "coverage",
            "steps_per_sample", "rows_per_sample", "wall_s"}


def script(name: str):
    return load_script(f"eval/{name}.py")


def test_joint_validity_with_the_oracle(tmp_path, capsys):
    out, png = tmp_path / "rows.json", tmp_path / "validity.png"
    script("joint_validity").main(["--oracle", "--toyset", "likes_tennis,shuffle_3", "--decoder", "random,threshold",
                                   "--tokens-per-step", "1,all", "--samples", "40", "--seed", "0",
                                   "--json", str(out), "--plot", str(png)])
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 2 * 2
    assert all(CONTRACT <= set(row) for row in rows)
    assert {r["toyset"] for r in rows} == {"likes_tennis", "shuffle_3"}
    assert png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "headline" in printed and "random on likes_tennis: 1.00 tokens/step" in printed


def test_joint_validity_with_a_model_directory_and_the_oracle_beside_it(tmp_path, tiny_model_dir):
    out, png = tmp_path / "rows.json", tmp_path / "validity.png"
    script("joint_validity").main(["--model", str(tiny_model_dir), "--toyset", "cities", "--decoder", "confidence",
                                   "--tokens-per-step", "1,2", "--samples", "20", "--seed", "1", "--json", str(out),
                                   "--plot", str(png), "--compare-oracle"])
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == [str(tiny_model_dir)] * 2 + ["oracle"] * 2
    assert all(CONTRACT <= set(row) for row in rows) and png.exists()


def test_joint_validity_frontier_sweeps_grids_and_draws_them(tmp_path, capsys):
    out, png = tmp_path / "rows.json", tmp_path / "frontier.png"
    script("joint_validity").main(["--oracle", "--toyset", "latin_square_3", "--decoder", "l2r", "--tokens-per-step",
                                   "1,2", "--grid", "speculative:tokens_per_step=all,drafts=1|2",
                                   "--grid", "threshold:tokens_per_step=1,threshold=0.9", "--samples", "30",
                                   "--json", str(out), "--frontier", str(png)])
    rows = json.loads(out.read_text())
    assert [(r["decoder"], r["knobs"]) for r in rows] == [("l2r", ""), ("l2r", ""), ("speculative", "drafts=1"),
                                                          ("speculative", "drafts=2"), ("threshold", "threshold=0.9")]
    assert all(CONTRACT | {"rows_per_token", "options"} <= set(row) for row in rows)
    assert rows[2]["options"]["drafts"] == 1 and png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "target (sets of >= 8 answer tokens)" in printed and "latin_square_3" in printed.split("target")[-1]


def test_joint_validity_needs_a_decoder_or_a_grid(tmp_path):
    with pytest.raises(ValueError, match="give --decoder NAMES, --grid"):
        script("joint_validity").main(["--oracle", "--toyset", "cities", "--json", str(tmp_path / "x.json")])


@pytest.mark.parametrize("flag,value,known", [("--decoder", "greedy", "confidence, entropy, entropy_bounded"),
                                              ("--toyset", "tennis", "cities"),
                                              ("--tokens-per-step", "0", "whole number >= 1 or 'all'")])
def test_joint_validity_bad_names_fail_with_the_valid_ones(tmp_path, flag, value, known):
    args = {"--toyset": "cities", "--decoder": "random", "--tokens-per-step": "1", flag: value}
    argv = ["--oracle", "--samples", "4", "--json", str(tmp_path / "x.json")] + [x for kv in args.items() for x in kv]
    with pytest.raises(ValueError, match=known):
        script("joint_validity").main(argv)
    assert not (tmp_path / "x.json").exists()


def test_frequency_collapse_on_a_tiny_model(tmp_path, tiny_model_dir):
    out, png = tmp_path / "collapse.json", tmp_path / "collapse.png"
    script("frequency_collapse").main(["--model", str(tiny_model_dir), "--toyset", "agreement", "--masks", "12",
                                       "--json", str(out), "--plot", str(png)])
    rows = json.loads(out.read_text())
    assert [r["distance"] for r in rows] == list(range(1, 13))
    assert all(len(r["top_tokens"]) == 3 and r["entropy"] >= 0 and r["kl_to_unigram"] >= 0 for r in rows)
    assert png.stat().st_size > 0


def test_frequency_collapse_refuses_more_masks_than_positions(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="use at most 31 masks"):
        script("frequency_collapse").main(["--model", str(tiny_model_dir), "--toyset", "agreement", "--masks", "40",
                                           "--json", str(tmp_path / "x.json")])


def test_bench_sampler_smoke(tmp_path):
    out = tmp_path / "bench.json"
    rows = script("bench_sampler").main(["--batches", "1,4", "--decoder", "confidence,threshold", "--gen-length", "6",
                                         "--repeats", "1", "--json", str(out)])
    assert len(json.loads(out.read_text())) == 4
    assert all(0 <= r["outside_forward_fraction"] <= 1 and r["steps"] >= 1 for r in rows)


def test_format_table_aligns_and_marks_missing_values():
    table = format_table([{"a": "x", "b": 1.23456}, {"a": "long", "b": None}], ["a", "b"])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "b"] and lines[2].split() == ["x", "1.235"] and lines[3].split() == ["long", "-"]
    assert len({len(line) for line in lines[1:3]}) == 1


def test_joint_validity_takes_a_user_set_by_import_reference_and_reports_wilson_intervals(tmp_path, monkeypatch):
    from jointobj.evaluation.metrics import wilson_interval
    from jointobj.toysets.builtin import resolve_toyset_reference

    (tmp_path / "eval_user_sets.py").write_text(
        "from jointobj.toysets.user_sets import make_toyset\n"
        "fruit = make_toyset('fruit', {'red apple': 0.5, 'green pear': 0.5})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    resolve_toyset_reference.cache_clear()
    out = tmp_path / "rows.json"
    script("joint_validity").main(["--oracle", "--toyset", "eval_user_sets:fruit,likes_tennis", "--decoder", "random",
                                   "--tokens-per-step", "1,all", "--samples", "60", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["toyset"] for r in rows] == ["fruit", "fruit", "likes_tennis", "likes_tennis"]
    for row in rows:
        interval = wilson_interval(round(row["validity"] * 60), 60)
        assert (row["validity_low"], row["validity_high"]) == pytest.approx(interval)
        assert row["validity_low"] <= row["validity"] <= row["validity_high"]
    assert rows[0]["validity"] == 1.0 and rows[0]["validity_low"] < 1.0  # honest at 1: not (1, 1)
    resolve_toyset_reference.cache_clear()

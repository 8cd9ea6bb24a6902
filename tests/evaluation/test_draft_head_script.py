"""eval/draft_head.py: heads trained for the oracle and a trained model, every draft decoder measured, the head's
cost counted, the target table, the wall part; the trained model's head saved and reused."""

import json

import pytest

from helpers import load_script


def script():
    return load_script("eval/draft_head.py")


def _row(decoder, validity, tokens_per_step, **extra):
    return {"model": "trained", "toyset": "latin_square_4", "decoder": decoder, "validity": validity,
            "validity_se": 0.02, "tokens_per_step": tokens_per_step, "rows_per_token": 2.0, "gen_length": 16,
            **extra}


def test_target_needs_rate_validity_rows_and_head_cost():
    rows = [_row("l2r K=1", 0.90, 1.0),
            _row("spec head N=1", 0.89, 4.5, head_over_row=0.05),
            _row("spec head N=4", 0.89, 4.5, head_over_row=0.20)]  # too costly a head
    status = {r["decoder"]: r for r in script().target_rows(rows)}
    assert status["spec head N=1"]["met"] and status["spec head N=1"]["goal"] == 4.0
    assert not status["spec head N=4"]["met"]
    rows[1] = _row("spec head N=1", 0.80, 4.5, head_over_row=0.05)  # validity 0.1 below: > 1 standard error
    assert not {r["decoder"]: r for r in script().target_rows(rows)}["spec head N=1"]["met"]


def test_oracle_smoke_measures_every_draft_decoder(tmp_path, capsys):
    js, png = tmp_path / "rows.json", tmp_path / "frontier.png"
    rows = script().main(["--sets", "latin_square_3", "--oracle-only", "--samples", "16", "--head-steps", "3",
                          "--head-samples", "32", "--json", str(js), "--plot", str(png)])
    rate = [r for r in rows if r["part"] == "rate"]
    assert {r["decoder"] for r in rate} == set(script().DECODERS)
    assert all(r["validity"] == 1.0 for r in rate)  # the oracle's own law is always valid
    assert all(r["head_flops_per_round"] > 0 for r in rate if "head" in r["decoder"])
    [head] = [r for r in rows if r["part"] == "head"]
    assert head["head_parameters"] > 0 and head["head_flops_per_token"] > 0
    assert len(json.loads(js.read_text())["rows"]) == len(rows) and png.stat().st_size > 0
    assert "spec head N=4" in capsys.readouterr().out
    redrawn = script().main(["--replot", str(js), str(js), "--plot", str(tmp_path / "again.png")])
    assert len(redrawn) == len(rate) and (tmp_path / "again.png").stat().st_size > 0  # a repeated file replaces


@pytest.mark.slow
def test_trained_model_head_is_saved_and_reused_and_timed(tmp_path, capsys):
    models = tmp_path / "models"
    argv = ["--sets", "latin_square_3", "--models", str(models), "--model-steps", "2", "--samples", "8",
            "--head-steps", "2", "--head-samples", "16", "--thresholds", "0.9", "--batches", "1,4",
            "--wall-samples", "4", "--json", str(tmp_path / "rows.json"), "--plot", str(tmp_path / "f.png")]
    rows = script().main(argv)
    assert {r["batch"] for r in rows if r["part"] == "wall"} == {1, 4}
    assert [r["part"] for r in rows].count("equal_validity") == 2
    saved = models / "latin_square_3-draft_head" / "draft_head.safetensors"
    assert saved.exists()
    stamp = saved.stat().st_mtime_ns
    rows = script().main(argv)
    assert saved.stat().st_mtime_ns == stamp  # reused, not retrained
    assert [r for r in rows if r["part"] == "head" and r["model"] == "trained"][0]["train_seconds"] == "reused"


def test_decoders_pick_the_rows_and_tree_rows_are_measured(tmp_path):
    labels = ["spec marginal N=2", "spec marginal tree k=2", "spec head tree k=2", "spec head topk k=2"]
    rows = script().main(["--sets", "latin_square_3", "--oracle-only", "--samples", "8", "--head-steps", "2",
                          "--head-samples", "16", "--decoders", ",".join(labels),
                          "--json", str(tmp_path / "rows.json"), "--plot", str(tmp_path / "f.png")])
    rate = {r["decoder"]: r for r in rows if r["part"] == "rate"}
    assert sorted(rate) == sorted(labels)
    assert all(r["validity"] == 1.0 and r["tokens_per_step"] > 1 for r in rate.values())
    assert rate["spec head tree k=2"]["head_flops_per_round"] > 0  # the head's cost counted on a tree
    [head] = [r for r in rows if r["part"] == "head"]
    assert head["head_flops_per_round"] == rate["spec head tree k=2"]["head_flops_per_round"]
    with pytest.raises(SystemExit, match="unknown --decoders"):
        script().main(["--decoders", "spec head N=3"])

"""eval/order_head_experiment.py runs in-process on tiny settings: every model at the budget with its decoders,
the learned order where a head is trained, the JSON written."""

import json

import pytest

from helpers import load_script


@pytest.mark.slow
def test_the_order_head_experiment_runs_and_writes_its_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    load_script("eval/order_head_experiment.py").main([
        "--toyset", "latin_square_3:3", "--base-steps", "4", "--head-steps", "2", "--head-batch", "4",
        "--head-samples", "2", "--law-steps", "2", "--plan", "2", "--samples", "20", "--out", str(tmp_path / "runs"),
        "--json", str(out), "--no-progress"])
    rows = [r for r in json.loads(out.read_text())["rows"] if "validity" in r]
    settings = {(r["model"], r["decoder"]) for r in rows}
    for model in ("oracle", "base", "head", "law", "token_ce"):
        assert {(model, "confidence"), (model, "l2r"), (model, "planned")} <= settings
    assert {m for m, d in settings if d == "learned"} == {"oracle", "head", "law"}
    assert all(r["decoder_nll"] is not None and r["options"]["steps"] == 3 for r in rows)
    assert "learned steps=3" in capsys.readouterr().out


@pytest.mark.slow
def test_the_oracle_only_run_needs_no_base(tmp_path):
    out = tmp_path / "rows.json"
    load_script("eval/order_head_experiment.py").main([
        "--oracle-only", "--toyset", "latin_square_3:5", "--head-steps", "2", "--head-batch", "4", "--head-samples",
        "2", "--plan", "2", "--samples", "20", "--out", str(tmp_path / "runs"), "--json", str(out), "--no-progress"])
    rows = [r for r in json.loads(out.read_text())["rows"] if "validity" in r]
    assert {r["decoder"] for r in rows} == {"confidence", "l2r", "planned", "learned"}
    assert not (tmp_path / "runs").exists()

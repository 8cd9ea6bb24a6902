"""The frontier: grids of decoder knobs expand as documented, every row carries its cost per token and
its knobs, the plot is drawn, and the target status is read off the rows as stated."""

import pytest

from jointobj.evaluation.frontier import SweepPoint, Target, parse_grid, sweep_points, target_status
from jointobj.evaluation.report import plot_frontier
from jointobj.evaluation.sweep import evaluate
from jointobj.toysets.oracle import OracleDenoiser


def test_parse_grid_reads_names_values_and_none():
    name, grid = parse_grid("speculative:drafts=1|3,draft_length=4|all,order=r2l")
    assert name == "speculative"
    assert grid == {"drafts": [1, 3], "draft_length": [4, None], "order": ["r2l"]}
    assert parse_grid("threshold:threshold=0.5|0.9") == ("threshold", {"threshold": [0.5, 0.9]})


@pytest.mark.parametrize("text", [":drafts=1", "speculative:drafts", "speculative:drafts="])
def test_parse_grid_refuses_malformed_text_with_an_example(text):
    with pytest.raises(ValueError, match="e.g."):
        parse_grid(text)


def test_sweep_points_take_the_product_and_a_grid_k_replaces_the_shared_ks():
    points = sweep_points(["l2r"], [1, "all"], {"threshold": {"temperature": 0.5}},
                          {"threshold": {"tokens_per_step": [1], "threshold": [0.5, 0.9]},
                           "speculative": {"tokens_per_step": [None], "drafts": [1, 2], "draft_length": [2, None]}})
    assert [(p.decoder, p.tokens_per_step) for p in points[:2]] == [("l2r", 1), ("l2r", None)]
    thresholds = [p for p in points if p.decoder == "threshold"]
    assert [(p.tokens_per_step, p.option_dict) for p in thresholds] == [
        (1, {"temperature": 0.5, "threshold": 0.5}), (1, {"temperature": 0.5, "threshold": 0.9})]
    assert thresholds[0].knobs == "threshold=0.5"  # fixed options are not knobs
    speculative = [p for p in points if p.decoder == "speculative"]
    assert len(speculative) == 4 and {p.tokens_per_step for p in speculative} == {None}
    assert speculative[1].knobs == "drafts=1 draft_length=all"


def test_sweep_points_refuse_a_scalar_where_values_belong():
    with pytest.raises(ValueError, match="non-empty list of values"):
        sweep_points([], [1], grid={"threshold": {"threshold": 0.9}})


def test_evaluate_runs_every_grid_point_with_its_cost_per_token(tmp_path):
    oracle = OracleDenoiser("likes_tennis")
    rows = evaluate(oracle, ["likes_tennis"], ["l2r"], [1, 2], samples=60, seed=0,
                    grid={"threshold": {"tokens_per_step": [1], "threshold": [0.5, 0.9]},
                          "speculative": {"tokens_per_step": [None], "drafts": [1, 2]}})
    assert [(r["decoder"], r["knobs"], r["requested_tokens_per_step"]) for r in rows] == [
        ("l2r", "", 1), ("l2r", "", 2), ("threshold", "threshold=0.5", 1), ("threshold", "threshold=0.9", 1),
        ("speculative", "drafts=1", "all"), ("speculative", "drafts=2", "all")]
    for row in rows:
        assert row["rows_per_token"] == pytest.approx(row["rows_per_sample"] / 3)
    spec = [r for r in rows if r["decoder"] == "speculative"]
    assert all(r["validity"] == 1.0 for r in spec)  # the oracle's l2r law is always valid
    assert spec[1]["rows_per_token"] > spec[0]["rows_per_token"]  # more drafts, more rows
    path = plot_frontier([{**r, "model": "oracle"} for r in rows], tmp_path / "frontier.png")
    assert path.stat().st_size > 10_000
    from PIL import Image

    assert Image.open(path).mode == "P"  # a palette PNG (report.save_figure)
    vector = plot_frontier(rows, tmp_path / "frontier.svg")  # other formats as matplotlib writes them
    assert vector.read_text().lstrip().startswith("<?xml")


def test_evaluate_with_explicit_points():
    rows = evaluate(OracleDenoiser("cities"), ["cities"], points=[SweepPoint("l2r", None)], samples=20)
    assert len(rows) == 1 and rows[0]["tokens_per_step"] == 2.0


def _row(decoder, tokens_per_step, validity, tv=0.10, rows_per_token=2.0, knobs="", k=None, rescore=None):
    return {"model": "m", "toyset": "long", "gen_length": 9, "decoder": decoder, "knobs": knobs,
            "requested_tokens_per_step": k, "tokens_per_step": tokens_per_step, "validity": validity,
            "validity_se": (validity * (1 - validity) / 400) ** 0.5, "tv": tv, "rows_per_token": rows_per_token,
            "rescore": rescore}


def test_target_status_is_met_only_by_a_fast_row_that_keeps_validity_tv_and_compute():
    reference = _row("l2r", 1.0, 0.95, k=1)
    fast = _row("speculative", 4.2, 0.94, knobs="drafts=8")
    status = target_status([reference, fast])
    assert status[0]["met"] is True and status[0]["best_knobs"] == "drafts=8"
    # each condition alone can fail it
    for broken in (dict(validity=0.90), dict(tokens_per_step=3.9), dict(tv=0.13), dict(rows_per_token=33.0)):
        status = target_status([reference, {**fast, **broken}])
        assert status[0]["met"] is False, broken
    # the exact energy is oracle knowledge: it does not count
    assert target_status([reference, {**fast, "rescore": "sir:exact,16,step"}])[0]["met"] is False
    # a model never valid one token per step keeps "its validity" with any decoder: not met, and said why
    never = target_status([{**reference, "validity": 0.0}, {**fast, "validity": 0.0}])[0]
    assert never["met"] is False and "never valid" in never["note"]


def test_target_status_skips_short_sets_and_says_when_the_reference_is_missing():
    short = {**_row("l2r", 1.0, 1.0, k=1), "gen_length": 7}
    assert target_status([short]) == []
    status = target_status([_row("speculative", 4.0, 1.0)], Target())
    assert status[0]["met"] is None

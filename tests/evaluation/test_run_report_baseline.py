"""TokenCE continued in the recipe's report: loaded from the run's token_ce folder, shown between base and
fine-tuned, and at the settings trained for each model's validity, interval, coverage, TV and the fine-tuned
model's change over TokenCE and the oracle in standard errors."""

import math

import pytest

from jointobj.evaluation import run_report
from jointobj.evaluation.metrics import validity_change_z, validity_fell
from jointobj.evaluation.run_report import BASELINE_LABEL, TRAINED_FOR_COLUMNS, trained_for_lines

N = 400


def test_the_change_in_standard_errors_is_the_pooled_two_proportion_statistic():
    pooled = (0.472 + 0.355) / 2
    expected = (0.472 - 0.355) / math.sqrt(pooled * (1 - pooled) * 2 / N)  # 3.4 se: the README's planned row
    assert validity_change_z(0.355, N, 0.472, N) == pytest.approx(expected)
    assert validity_change_z(0.472, N, 0.355, N) == pytest.approx(-expected)
    assert validity_change_z(1.0, N, 1.0, N) == 0.0 and validity_change_z(0.0, N, 0.0, N) == 0.0
    assert validity_fell(0.472, N, 0.355, N) and not validity_fell(0.355, N, 0.472, N)


def _row(model, toyset, validity, trained_for=True):
    return {"model": model, "trained_for": trained_for, "toyset": toyset, "decoder": "confidence",
            "requested_tokens_per_step": 3, "knobs": "", "tokens_per_step": 3.0, "validity": validity,
            "validity_low": validity - 0.05, "validity_high": validity + 0.05, "samples": N, "coverage": 0.9,
            "coverage_exact": 1.0, "tv": 0.4, "tv_floor": 0.07, "decoder_nll": 3.0}


def test_the_trained_for_table_holds_every_model_and_the_fine_tuned_change():
    rows = [_row(model, toyset, validity)
            for model, validity in (("base", 0.30), (BASELINE_LABEL, 0.355), ("fine-tuned", 0.472), ("oracle", 0.475))
            for toyset in ("agreement", "latin_square_3")]
    rows.append(_row("fine-tuned", "latin_square_3", 0.9, trained_for=False))  # another setting: not in the table
    lines = trained_for_lines(rows)
    assert [(line["toyset"], line["model"]) for line in lines] == [
        (toyset, model) for toyset in ("agreement", "latin_square_3")
        for model in ("base", BASELINE_LABEL, "fine-tuned", "oracle")]
    tuned = lines[2]
    assert tuned["setting"] == "confidence K=3" and tuned["valid"] == 0.472 and tuned["valid 95%"] == "0.422-0.522"
    assert tuned[f"vs {BASELINE_LABEL}"] == "+3.4 se" and tuned["vs oracle"] == "-0.1 se"
    assert "vs oracle" not in lines[0] and set(tuned) <= set(TRAINED_FOR_COLUMNS)


class Loaded(Exception):
    """Stops report_run once every model is loaded, carrying the paths."""


def test_the_report_loads_tokence_from_the_run_and_puts_it_between_base_and_fine_tuned(tmp_path, monkeypatch):
    asked = []

    def from_pretrained(path, **options):
        asked.append(str(path))
        return type("Model", (), {"eval": lambda self: self})()

    def evaluate(denoiser, *args, **kwargs):
        raise Loaded()

    monkeypatch.setattr(run_report.Denoiser, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(run_report, "evaluate", evaluate)
    trained = {"fine-tuned": {"steps": 200, "seconds": 50.0},
               BASELINE_LABEL: {"steps": 700, "seconds": 49.0, "dir": "token_ce"}}
    with pytest.raises(Loaded):
        run_report.report_run(tmp_path / "base", tmp_path / "run", ["likes_tennis"], decoders=["l2r"],
                              tokens_per_step=[1], samples=4, seed=0, output_dir=tmp_path, trained=trained)
    assert asked == [str(tmp_path / "base"), str(tmp_path / "run" / "token_ce"), str(tmp_path / "run")]
    asked.clear()
    with pytest.raises(Loaded):  # no TokenCE run recorded: base and fine-tuned only
        run_report.report_run(tmp_path / "base", tmp_path / "run", ["likes_tennis"], decoders=["l2r"],
                              tokens_per_step=[1], samples=4, seed=0, output_dir=tmp_path)
    assert asked == [str(tmp_path / "base"), str(tmp_path / "run")]

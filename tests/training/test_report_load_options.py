"""`jointobj report` loads a run's models as the run loaded its base: trust_remote_code, the mask id and the
compatibility rules are recorded in recipe.json and reach Denoiser.from_pretrained for base and fine-tuned."""

import pytest

from jointobj.evaluation import run_report
from jointobj.training import recipe
from jointobj.training.recipe import parse_recipe_args, run_record, write_report


class Loaded(Exception):
    """Stops report_run at its first load, carrying what it was asked."""


def test_the_run_record_keeps_how_the_base_was_loaded(tmp_path):
    model_args, data_args, config = parse_recipe_args(
        ["--model_name_or_path", str(tmp_path), "--trust_remote_code", "--mask_token_id", "126336", "--no_compat",
         "--output_dir", str(tmp_path / "out"), "--report_to", "none"], None)
    record = run_record(model_args, data_args, config, tmp_path)
    assert record["load"] == {"trust_remote_code": True, "mask_token_id": 126336, "compat": False}


def test_the_report_loads_both_models_with_the_recorded_options(tmp_path, monkeypatch):
    asked = []

    def from_pretrained(path, **options):
        asked.append((str(path), options))
        if len(asked) == 2:
            raise Loaded()
        return type("Model", (), {"eval": lambda self: self})()

    monkeypatch.setattr(run_report.Denoiser, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(recipe, "mark_failed", lambda *args, **kwargs: None)
    load = {"trust_remote_code": True, "mask_token_id": 126336, "compat": False}
    record = {"base": str(tmp_path / "base"), "toysets": ["likes_tennis"], "report_decoders": ["l2r"],
              "report_tokens_per_step": ["1"], "report_samples": 4, "seed": 0, "load": load}
    with pytest.raises(Loaded):
        write_report(tmp_path / "run", record, step=2)
    assert asked == [(str(tmp_path / "base"), load), (str(tmp_path / "run"), load)]

"""The embedded base directory: built only where it is missing or empty, reused only for the toy sets it
was pretrained on, and never emptied when it holds something else."""

import json
import shutil
from pathlib import Path

import pytest

from jointobj.training.embedded import RECORD_NAME, check_base_dir, ensure_base, pretrain_base


def snapshot(directory) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def base(tiny_model_dir, tmp_path):
    """A saved model pretrained (so its record says) on likes_tennis and cities."""
    directory = tmp_path / "base"
    shutil.copytree(tiny_model_dir, directory)
    (directory / RECORD_NAME).write_text(json.dumps({"toysets": ["likes_tennis", "cities"]}))
    return directory


def test_missing_or_empty_base_dir_is_to_be_built(tmp_path):
    # Fails if an empty directory (e.g. made by mkdir -p beforehand) is refused as foreign.
    assert check_base_dir(tmp_path / "nowhere", "likes_tennis") is False
    (tmp_path / "empty").mkdir()
    assert check_base_dir(tmp_path / "empty", "likes_tennis") is False


def test_foreign_non_empty_base_dir_is_refused_and_kept(tmp_path):
    # Fails if a directory without jointobj.json counts as "to be built" (the build would then replace it).
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty but holds no jointobj base .* does not delete it"):
        check_base_dir(tmp_path / "mine", "likes_tennis")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_saved_model_without_a_record_is_refused(tiny_model_dir, tmp_path):
    # Fails if any directory with jointobj.json is reused, whatever it was trained on.
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    with pytest.raises(ValueError, match=f"no {RECORD_NAME}, so the toy sets it was pretrained on are unknown"):
        check_base_dir(tmp_path / "model", "likes_tennis")


def test_base_pretrained_on_other_sets_names_the_missing_one(base):
    # Fails if the record is not compared with this run's sets, or the error names the wrong set.
    with pytest.raises(ValueError, match=r"pretrained on likes_tennis,cities, not on copy_4; pass another --base_dir"):
        check_base_dir(base, "likes_tennis, copy_4")


def test_base_pretrained_on_the_sets_is_reused(base):
    # Fails if a subset (or spaces after the commas) is not accepted.
    assert check_base_dir(base, "cities") is True
    assert check_base_dir(base, "cities, likes_tennis") is True


def test_ensure_base_refuses_a_base_for_other_sets_without_building(base):
    # Fails if ensure_base reuses any ready base (the old behaviour) or starts a build over it.
    before = snapshot(base)
    with pytest.raises(ValueError, match="not on copy_4"):
        ensure_base(base, "copy_4", steps=1, learning_rate=1e-3, samples_per_toyset=4, seed=0)
    assert snapshot(base) == before


def test_pretrain_base_keeps_a_foreign_directory(tmp_path):
    # Fails if pretrain_base trains and then replaces base_dir (it used shutil.rmtree on it).
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="does not delete it"):
        pretrain_base(tmp_path / "mine", "likes_tennis", steps=1, learning_rate=1e-3, samples_per_toyset=4, seed=0)
    assert snapshot(tmp_path / "mine") == {Path("notes.txt"): b"mine"}
    assert not (tmp_path / "mine.staging").exists()


def test_pretrain_base_keeps_a_base_already_built_for_the_sets(base):
    # Fails if pretrain_base retrains (and rewrites) a base that already fits, e.g. one another job just built.
    before = snapshot(base)
    pretrain_base(base, "likes_tennis", steps=1, learning_rate=1e-3, samples_per_toyset=4, seed=0)
    assert snapshot(base) == before


@pytest.mark.slow  # trains for one step
def test_pretrain_base_builds_the_size_asked_for_and_records_it(tmp_path):
    # Fails if the size is ignored (the base was always 64 x 2) or missing from the record.
    pretrain_base(tmp_path / "base", "likes_tennis", steps=1, learning_rate=1e-3, samples_per_toyset=4, seed=0,
                  size="xsmall")
    record = json.loads((tmp_path / "base" / RECORD_NAME).read_text())
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert record["size"] == "xsmall" and (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)

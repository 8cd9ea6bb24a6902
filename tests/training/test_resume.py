"""Nothing lost: output_dir refusal, resume from complete verified checkpoints only, rotation, seeds, NaN stops.

The recipe runs in-process (marked slow: a few seconds each) on the session's tiny untrained model
with tiny overrides (a few steps, no DeepSpeed). Each test names the old behaviour it fails against.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from jointobj import Denoiser
from jointobj.training.checkpoints import (
    MANIFEST_NAME,
    CheckpointError,
    checkpoint_problem,
    newest_complete_checkpoint,
    read_latest,
    resume_checkpoint,
    rotate_checkpoints,
    write_latest,
    write_manifest,
)
from jointobj.training.recipe import run_recipe

DATASET = "likes_tennis,cities"


def recipe(model_dir: Path, output_dir: Path, *extra: str):
    return run_recipe(["--model_name_or_path", str(model_dir), "--dataset", DATASET, "--output_dir", str(output_dir),
                       "--deepspeed", "", "--max_steps", "2", "--per_device_train_batch_size", "4",
                       "--samples_per_toyset", "16", "--logging_steps", "1", "--save_strategy", "no",
                       "--disable_tqdm", "true", "--report_to", "none", *extra], None)


def snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def checkpointed(*extra: str) -> list[str]:
    return ["--save_strategy", "steps", "--save_steps", "1", "--lr_scheduler_type", "constant", *extra]


# ---- output_dir ----------------------------------------------------------------------------------

@pytest.mark.slow  # runs the recipe
def test_output_dir_holding_a_run_is_refused(tiny_model_dir, tmp_path):
    # Fails if a second run into a finished run's output_dir trains and overwrites its adapter (exit 0, no word).
    recipe(tiny_model_dir, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    refused = r"already holds a run .*--resume_from_checkpoint latest.*--overwrite_output_dir"
    with pytest.raises(ValueError, match=refused):
        recipe(tiny_model_dir, tmp_path / "out", "--seed", "7")
    assert snapshot(tmp_path / "out") == before


@pytest.mark.slow  # runs the recipe
def test_overwrite_output_dir_starts_over_without_the_old_checkpoints(tiny_model_dir, tmp_path):
    # Fails if --overwrite_output_dir is not a flag, or if the old run's checkpoint-2 survives beside the new run.
    recipe(tiny_model_dir, tmp_path / "out", *checkpointed("--save_steps", "2"))
    (tmp_path / "out" / "notes.txt").write_text("mine")
    recipe(tiny_model_dir, tmp_path / "out", "--overwrite_output_dir", "true", "--max_steps", "1")
    assert not (tmp_path / "out" / "checkpoint-2").exists()
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # not the run's: left alone


@pytest.mark.slow  # runs the recipe
def test_latest_on_a_finished_run_changes_nothing(tiny_model_dir, tmp_path, capsys):
    # Fails if resuming a finished run trains again and rewrites its output.
    recipe(tiny_model_dir, tmp_path / "out", *checkpointed())
    before = snapshot(tmp_path / "out")
    result = recipe(tiny_model_dir, tmp_path / "out", *checkpointed("--resume_from_checkpoint", "latest"))
    assert result.trainer is None and "finished at step 2; nothing to resume" in capsys.readouterr().out
    assert snapshot(tmp_path / "out") == before


# ---- resume: the newest complete, verified checkpoint --------------------------------------------

@pytest.mark.slow  # runs the recipe
def test_resume_skips_a_stale_latest_and_an_incomplete_checkpoint(tiny_model_dir, tmp_path, capsys):
    # Fails if `latest` naming a deleted checkpoint restarts from step 0, or if a newer checkpoint whose
    # save never completed (no manifest) is loaded.
    out = tmp_path / "out"
    recipe(tiny_model_dir, out, *checkpointed("--max_steps", "3"))
    (out / "finished.json").unlink()
    (out / "checkpoint-3" / MANIFEST_NAME).unlink()  # as a save killed before its manifest leaves it
    write_latest(out, "checkpoint-9")  # names a checkpoint that no longer exists
    result = recipe(tiny_model_dir, out, *checkpointed("--max_steps", "4", "--resume_from_checkpoint", "latest"))
    assert "resuming from " + str(out / "checkpoint-2") in capsys.readouterr().out
    steps = [row["step"] for row in result.trainer.state.log_history if "loss" in row]
    assert steps == [1, 2, 3, 4]  # 1 and 2 restored from checkpoint-2's state, 3 and 4 trained here


@pytest.mark.slow  # runs the recipe
def test_resume_with_no_complete_checkpoint_stops(tiny_model_dir, tmp_path):
    # Fails if resume from a directory whose only checkpoint is incomplete quietly starts from step 0.
    out = tmp_path / "out"
    recipe(tiny_model_dir, out, *checkpointed("--max_steps", "1"))
    (out / "finished.json").unlink()
    (out / "checkpoint-1" / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"no complete checkpoint .*checkpoint-1: it has no manifest.json"):
        recipe(tiny_model_dir, out, *checkpointed("--resume_from_checkpoint", "latest"))


@pytest.mark.slow  # runs the recipe
def test_an_altered_checkpoint_is_never_loaded(tiny_model_dir, tmp_path):
    # Fails if resume loads a checkpoint whose files differ from what the save wrote (here: a planted file
    # and a changed optimizer state), which is how a tampered or half-copied checkpoint would be loaded.
    out = tmp_path / "out"
    recipe(tiny_model_dir, out, *checkpointed("--max_steps", "1"))
    (out / "finished.json").unlink()
    checkpoint = out / "checkpoint-1"
    (checkpoint / "payload.pt").write_bytes(b"planted")
    with pytest.raises(CheckpointError, match="payload.pt"):
        recipe(tiny_model_dir, out, *checkpointed("--resume_from_checkpoint", str(checkpoint)))
    (checkpoint / "payload.pt").unlink()
    with (checkpoint / "optimizer.pt").open("r+b") as file:
        file.seek(100)
        file.write(b"\x00\x01\x02")
    assert "does not match its sha256" in checkpoint_problem(checkpoint)
    with pytest.raises(CheckpointError, match="optimizer.pt does not match its sha256"):
        recipe(tiny_model_dir, out, *checkpointed("--resume_from_checkpoint", str(checkpoint)))


def test_manifest_catches_a_missing_resized_altered_or_unlisted_file(tmp_path):
    # Fails if verification only checks that the manifest exists.
    checkpoint = tmp_path / "checkpoint-5"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "a.bin").write_bytes(b"abcd")
    (checkpoint / "sub" / "b.bin").write_bytes(b"xyz")
    assert "no manifest.json" in checkpoint_problem(checkpoint)
    write_manifest(checkpoint)
    assert checkpoint_problem(checkpoint) is None
    (checkpoint / "a.bin").write_bytes(b"abce")
    assert "a.bin does not match its sha256" in checkpoint_problem(checkpoint)
    (checkpoint / "a.bin").write_bytes(b"abc")
    assert "a.bin has 3 bytes, its manifest says 4" in checkpoint_problem(checkpoint)
    (checkpoint / "a.bin").write_bytes(b"abcd")
    (checkpoint / "sub" / "b.bin").unlink()
    assert "sub/b.bin is missing" in checkpoint_problem(checkpoint)
    (checkpoint / "sub" / "b.bin").write_bytes(b"xyz")
    (checkpoint / "extra.pt").write_bytes(b"")
    assert "does not list: extra.pt" in checkpoint_problem(checkpoint)


def test_resuming_an_older_checkpoint_beside_newer_complete_ones_is_refused(tmp_path):
    # Fails if resume accepts checkpoint-2 while the abandoned run's complete checkpoint-4 stays in the
    # output_dir, where a later `--resume_from_checkpoint latest` would silently pick it up.
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "w.bin").write_bytes(bytes([step]))
    write_manifest(tmp_path / "checkpoint-2")
    write_manifest(tmp_path / "checkpoint-4")  # checkpoint-6 stays incomplete: no obstacle
    with pytest.raises(CheckpointError, match=r"newer complete checkpoints \(checkpoint-4\)"):
        resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-2"))
    assert resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-4")) == tmp_path / "checkpoint-4"
    assert (tmp_path / "checkpoint-2").is_dir() and (tmp_path / "checkpoint-4").is_dir()  # nothing deleted


def test_rotation_waits_for_a_complete_recorded_successor(tmp_path):
    # Fails if rotation deletes older checkpoints while the newest is incomplete or not yet in `latest`.
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "w.bin").write_bytes(bytes([step]))
    write_manifest(tmp_path / "checkpoint-1")
    write_manifest(tmp_path / "checkpoint-2")
    write_latest(tmp_path, "checkpoint-2")
    with pytest.raises(CheckpointError, match="not complete"):  # checkpoint-3 has no manifest yet
        rotate_checkpoints(tmp_path, 1, keep=tmp_path / "checkpoint-3")
    write_manifest(tmp_path / "checkpoint-3")
    with pytest.raises(CheckpointError, match="recorded"):  # `latest` still names checkpoint-2
        rotate_checkpoints(tmp_path, 1, keep=tmp_path / "checkpoint-3")
    assert {p.name for p in tmp_path.iterdir()} >= {"checkpoint-1", "checkpoint-2", "checkpoint-3"}
    write_latest(tmp_path, "checkpoint-3")
    rotate_checkpoints(tmp_path, 1, keep=tmp_path / "checkpoint-3")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]


@pytest.mark.slow  # runs the recipe
def test_with_limit_one_the_previous_checkpoint_stays_until_the_next_step_confirms_the_new_one(
        tiny_model_dir, tmp_path):
    # Fails if the Trainer's rotation deletes checkpoint-1 as soon as checkpoint-2 is written (before any
    # forward has shown checkpoint-2's weights give a finite loss), or never rotates at all.
    out = tmp_path / "out"
    recipe(tiny_model_dir, out, *checkpointed("--max_steps", "3", "--save_total_limit", "1"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"] and read_latest(out) == "checkpoint-3"
    assert checkpoint_problem(out / "checkpoint-3") is None


# ---- NaN / inf -----------------------------------------------------------------------------------

def token_ce_loss(checkpoint: Path) -> float:
    """The per-token loss of a reloaded checkpoint over a fixed batch of the training sets."""
    from jointobj.diffusion.batch import DiffusionCollator
    from jointobj.objectives import LOSSES
    from jointobj.training.data import load_training_data

    denoiser = Denoiser.from_pretrained(checkpoint).eval()
    rows = load_training_data(DATASET, denoiser.tokenizer, 16)
    batch = DiffusionCollator(0)([rows[i] for i in range(32)])
    torch.manual_seed(0)
    with torch.no_grad():
        return float(LOSSES.get("token_ce")()(denoiser, batch).loss)


@pytest.mark.slow  # runs the recipe
def test_a_divergent_run_stops_naming_a_checkpoint_that_reloads_to_a_finite_loss(tiny_model_dir, tmp_path):
    # The learning rate ramps from 0 to 1e5: step 1 is tame, step 2's update ruins the weights, and step 3's
    # forward gives NaN. Fails if the stop names checkpoint-2 (whose weights give the NaN), if rotation deleted
    # checkpoint-1, or if checkpoint-2 still looks complete to a resume.
    out = tmp_path / "out"
    with pytest.raises(FloatingPointError, match="stopped at step 2") as stop:
        recipe(tiny_model_dir, out, "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "1",
               "--learning_rate", "1e5", "--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "20",
               "--max_grad_norm", "0", "--lora_r", "0", "--objective", "token_ce", "--max_steps", "30",
               "--per_device_train_batch_size", "8", "--samples_per_toyset", "32")
    named = re.search(r"finite loss is (\S+);", str(stop.value))
    assert named is not None, str(stop.value)
    assert Path(named.group(1)) == out / "checkpoint-1"
    assert torch.isfinite(torch.tensor(token_ce_loss(out / "checkpoint-1")))
    assert checkpoint_problem(out / "checkpoint-2") is not None
    assert newest_complete_checkpoint(out)[0] == out / "checkpoint-1" and read_latest(out) == "checkpoint-1"


# ---- seeds ---------------------------------------------------------------------------------------

@pytest.mark.slow  # runs the recipe
def test_one_seed_gives_bit_identical_adapters(tiny_model_dir, tmp_path):
    # Fails if LoRA is initialised before anything is seeded (the two runs then start from different adapters).
    torch.manual_seed(1)
    recipe(tiny_model_dir, tmp_path / "a", "--seed", "3")
    torch.manual_seed(2)  # whatever the process did before must not matter
    recipe(tiny_model_dir, tmp_path / "b", "--seed", "3")
    first, second = (tmp_path / d / "adapter_model.safetensors" for d in "ab")
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.slow  # runs the recipe
def test_interrupted_and_resumed_equals_uninterrupted(tiny_model_dir, tmp_path):
    # Constant LR, so stopping at step 2 changes no schedule. Fails if the resumed run's adapter differs by a bit
    # (an unseeded LoRA init makes the two runs' checkpoint-2 differ).
    recipe(tiny_model_dir, tmp_path / "straight", *checkpointed("--max_steps", "4"))
    recipe(tiny_model_dir, tmp_path / "split", *checkpointed("--max_steps", "2"))
    recipe(tiny_model_dir, tmp_path / "split", *checkpointed("--max_steps", "4", "--resume_from_checkpoint", "latest"))
    first, second = (tmp_path / d / "adapter_model.safetensors" for d in ("straight", "split"))
    assert first.read_bytes() == second.read_bytes()


# ---- the adapter's base --------------------------------------------------------------------------

@pytest.mark.slow  # runs the recipe
def test_adapter_records_a_base_that_loads_from_another_directory(tiny_model_dir, tmp_path, monkeypatch):
    # Fails if the adapter records the base as given on the command line (relative to where the run started).
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    recipe(Path("base"), Path("out"))
    recorded = json.loads((tmp_path / "out" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded).is_absolute()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert Denoiser.from_pretrained(tmp_path / "out").has_adapter

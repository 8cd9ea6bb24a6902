"""Kill the recipe (SIGKILL) at chosen points of a checkpoint save, resume it, and get the uninterrupted adapter.

Each run saves every step and keeps one checkpoint (--save_total_limit 1), at a constant learning
rate, so a resumed run must end bit-identical to a run never interrupted. Fails against a save
that rotates before the new checkpoint is complete and recorded, a resume that trusts `latest` or
the highest checkpoint number, or a resume that loads a checkpoint whose manifest is missing or half.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jointobj.training.checkpoints import newest_complete_checkpoint

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def run(model_dir: Path, output_dir: Path, *extra: str, kill: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "tests" / "killed_recipe.py"), "--model_name_or_path", str(model_dir),
               "--dataset", "likes_tennis,cities", "--output_dir", str(output_dir), "--deepspeed", "",
               "--max_steps", str(STEPS), "--per_device_train_batch_size", "4", "--samples_per_toyset", "16",
               "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "1",
               "--lr_scheduler_type", "constant", "--logging_steps", "1", "--disable_tqdm", "true",
               "--report_to", "none", *extra]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    environment.pop("JOINTOBJ_TEST_KILL", None)
    if kill is not None:
        environment["JOINTOBJ_TEST_KILL"] = kill
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> bytes:
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = run(tiny_model_dir, output_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return (output_dir / "adapter_model.safetensors").read_bytes()


@pytest.mark.slow  # two recipe processes
@pytest.mark.parametrize("kill", ["mid_save:2", "mid_manifest:2", "before_latest:3", "mid_rotation:3",
                                  "after_rotation:3"])
def test_killed_mid_save_then_resumed_equals_uninterrupted(kill, uninterrupted, tiny_model_dir, tmp_path):
    output_dir = tmp_path / "run"
    killed = run(tiny_model_dir, output_dir, kill=kill)
    assert killed.returncode == -9, f"the kill point {kill} was never reached:\n{killed.stderr[-3000:]}"
    assert newest_complete_checkpoint(output_dir)[0] is not None, sorted(p.name for p in output_dir.rglob("*"))
    resumed = run(tiny_model_dir, output_dir, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert (output_dir / "adapter_model.safetensors").read_bytes() == uninterrupted


@pytest.mark.slow  # two deepspeed launches of two CPU ranks each, a few minutes
def test_two_ranks_under_zero2_killed_before_latest_resume_from_the_newest_complete_checkpoint(
        tiny_model_dir, tmp_path):
    # Rank 0 dies after checkpoint-2's manifest, before `latest` names it (rank 1 then fails at the next
    # barrier). Fails if resume trusts `latest` (checkpoint-1), if DeepSpeed's per-rank files make the
    # manifest disagree with the disk, or if the resumed job cannot finish.
    from helpers import free_port

    def launch(*extra: str, kill: str | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                   str(free_port()), str(ROOT / "tests" / "killed_recipe.py"),
                   "--model_name_or_path", str(tiny_model_dir),
                   "--dataset", "likes_tennis,cities", "--output_dir", str(tmp_path / "run"),
                   "--deepspeed", str(ROOT / "ds_configs" / "zero2.json"), "--objective", "token_ce",
                   "--max_steps", "3", "--per_device_train_batch_size", "4", "--samples_per_toyset", "16",
                   "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "1",
                   "--lr_scheduler_type", "constant", "--logging_steps", "1", "--disable_tqdm", "true",
                   "--report_to", "none", *extra]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        environment.pop("JOINTOBJ_TEST_KILL", None)
        if kill is not None:
            environment["JOINTOBJ_TEST_KILL"] = kill
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=environment)

    killed = launch(kill="before_latest:2")
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint-2" / "manifest.json").exists()
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-1"
    resumed = launch("--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from {tmp_path / 'run' / 'checkpoint-2'}" in resumed.stdout
    assert newest_complete_checkpoint(tmp_path / "run")[0] == tmp_path / "run" / "checkpoint-3"


@pytest.fixture(scope="module")
def uninterrupted_draft_head(tiny_model_dir, tmp_path_factory) -> dict[str, bytes]:
    output_dir = tmp_path_factory.mktemp("uninterrupted_draft_head") / "run"
    done = run(tiny_model_dir, output_dir, *DRAFT_HEAD)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: (output_dir / name).read_bytes() for name in DRAFT_HEAD_FILES}


DRAFT_HEAD = ("--config", str(ROOT / "recipes" / "configs" / "draft_head.yaml"), "--warmup_steps", "0")
DRAFT_HEAD_FILES = ("adapter_model.safetensors", "draft_head.safetensors")


@pytest.mark.slow  # two recipe processes each
@pytest.mark.parametrize("kill", ["mid_save:2", "before_latest:3"])
def test_the_draft_head_recipe_killed_then_resumed_equals_uninterrupted(kill, uninterrupted_draft_head,
                                                                        tiny_model_dir, tmp_path):
    # The head's weights and Adam state come back from the checkpoint, and the own samples drawn after the
    # resume are the uninterrupted run's (the global RNG the sampler draws from is restored). Fails if a
    # checkpoint misses the head or its optimizer state, or if the resumed run draws other samples or cuts.
    output_dir = tmp_path / "run"
    killed = run(tiny_model_dir, output_dir, *DRAFT_HEAD, kill=kill)
    assert killed.returncode == -9, f"the kill point {kill} was never reached:\n{killed.stderr[-3000:]}"
    resumed = run(tiny_model_dir, output_dir, *DRAFT_HEAD, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert {name: (output_dir / name).read_bytes() for name in DRAFT_HEAD_FILES} == uninterrupted_draft_head

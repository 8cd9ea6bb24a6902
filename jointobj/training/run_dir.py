"""What a training run leaves in its output_dir, and the rules that keep one run from overwriting another.

    check_previous_run("runs/x", resume=None, overwrite=False)   # ValueError if runs/x already holds a run
    mark_finished("runs/x", step=200)                             # after the final save
    finished_step("runs/x")                                       # 200: a resume has nothing left to do

A run is its checkpoint-N directories plus the files in RUN_FILES (the saved adapter or model,
jointobj.json, `latest`, finished.json). A directory holding any of them is refused unless the
user resumes it or passes --overwrite_output_dir, which deletes those (and nothing else).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jointobj.model.conventions import CONFIG_NAME
from jointobj.training.checkpoints import LATEST_NAME, checkpoints_in, discard_checkpoint

FINISHED_NAME = "finished.json"  # written after the final save: the step the run finished at
RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "model.safetensors", CONFIG_NAME, LATEST_NAME,
             FINISHED_NAME)


def previous_run(output_dir: str | os.PathLike) -> list[str]:
    """The names in `output_dir` that a run wrote (empty when it holds none)."""
    output_dir = Path(output_dir)
    found = [checkpoint.name for checkpoint in checkpoints_in(output_dir)]
    return found + [name for name in RUN_FILES if (output_dir / name).exists()]


def check_previous_run(output_dir: str | os.PathLike, resume: str | None, overwrite: bool) -> None:
    """Refuse to start a new run over one already in `output_dir`, naming both ways on."""
    found = previous_run(output_dir)
    if found and not resume and not overwrite:
        shown = ", ".join(found[:4]) + (" ..." if len(found) > 4 else "")
        raise ValueError(
            f"output_dir {output_dir} already holds a run ({shown}); a new run would overwrite it. Continue it with "
            "--resume_from_checkpoint latest, start over with --overwrite_output_dir (deletes that run's "
            "checkpoints and saved model), or pass another --output_dir."
        )


def clear_previous_run(output_dir: str | os.PathLike) -> list[str]:
    """Delete what a run wrote in `output_dir` (checkpoints and RUN_FILES), nothing else; returns the names."""
    output_dir = Path(output_dir)
    found = previous_run(output_dir)
    for checkpoint in checkpoints_in(output_dir):
        discard_checkpoint(checkpoint)
    for name in RUN_FILES:
        (output_dir / name).unlink(missing_ok=True)
    return found


def mark_finished(output_dir: str | os.PathLike, step: int) -> None:
    path = Path(output_dir) / FINISHED_NAME
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps({"global_step": step}) + "\n")
    os.replace(staging, path)


def finished_step(output_dir: str | os.PathLike) -> int | None:
    """The step the run in `output_dir` finished at, or None if it has not finished."""
    path = Path(output_dir) / FINISHED_NAME
    return json.loads(path.read_text())["global_step"] if path.is_file() else None

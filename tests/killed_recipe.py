"""Run a recipe that kills itself (SIGKILL, as a scheduler or the OOM killer would) at one point of a checkpoint save.

    JOINTOBJ_TEST_KILL=before_latest:3 python tests/killed_recipe.py --model_name_or_path DIR --output_dir runs/x ...

Points, each in the save (or rotation) of checkpoint-STEP, on the rank that writes the files:

- mid_save: the Trainer's files are written, the manifest not yet;
- mid_manifest: half of the manifest's temporary file is written;
- before_latest: the manifest is in place, `latest` still names the previous checkpoint;
- mid_rotation: an older checkpoint's manifest is deleted, its files not yet;
- after_rotation: the older checkpoints are deleted.

Without JOINTOBJ_TEST_KILL it is the plain recipe. Under the deepspeed launcher only global rank 0
kills itself; the launcher then ends the other ranks.
"""

import os
import signal
import sys

from jointobj.training import checkpoints, trainer
from jointobj.training.recipe import run_recipe


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, step: int) -> None:
    """Patch the function that runs at `point` to kill the process when it reaches checkpoint-`step`."""
    def target(path) -> bool:
        return checkpoints.checkpoint_step(path) == step

    if point == "mid_save":
        write_manifest = trainer.write_manifest
        trainer.write_manifest = lambda checkpoint, *config: (die() if target(checkpoint)
                                                              else write_manifest(checkpoint, *config))
    elif point == "mid_manifest":
        atomic_write = checkpoints._atomic_write

        def half_then_die(path, text):
            if path.name == checkpoints.MANIFEST_NAME and target(path.parent):
                path.with_name(path.name + ".tmp").write_text(text[: len(text) // 2])
                die()
            atomic_write(path, text)
        checkpoints._atomic_write = half_then_die
    elif point == "before_latest":
        write_latest = trainer.write_latest
        trainer.write_latest = lambda run_dir, checkpoint: (die() if target(checkpoint)
                                                            else write_latest(run_dir, checkpoint))
    elif point == "mid_rotation":
        rotate = trainer.rotate_checkpoints

        def rotate_then_die_mid_delete(run_dir, limit, keep, protect=None):
            if target(keep):
                checkpoints.discard_checkpoint = lambda checkpoint: (
                    (checkpoint / checkpoints.MANIFEST_NAME).unlink(), die())
            return rotate(run_dir, limit, keep, protect)
        trainer.rotate_checkpoints = rotate_then_die_mid_delete
    elif point == "after_rotation":
        rotate = trainer.rotate_checkpoints

        def rotate_then_die(run_dir, limit, keep, protect=None):
            deleted = rotate(run_dir, limit, keep, protect)
            if target(keep):
                die()
            return deleted
        trainer.rotate_checkpoints = rotate_then_die
    else:
        raise ValueError(f"unknown kill point {point!r}")


def main() -> None:
    kill = os.environ.get("JOINTOBJ_TEST_KILL")
    if kill and int(os.environ.get("RANK", "0")) == 0:
        point, step = kill.split(":")
        arm(point, int(step))
    run_recipe(sys.argv[1:])


if __name__ == "__main__":
    main()

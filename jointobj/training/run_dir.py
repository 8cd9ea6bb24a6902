"""What a training run leaves in its output_dir, and the rules that keep one run from overwriting another.

    check_previous_run("runs/x", resume=None, overwrite=False)   # ValueError if runs/x already holds a run
    mark_finished("runs/x", step=200)                             # after the final save and the report
    finished_step("runs/x")                                       # 200: a resume has nothing left to do
    with run_lock("runs/x"): ...                                  # one run at a time (UserError naming the holder)

One run per directory: while a recipe runs, its global rank 0 holds an exclusive advisory lock
(`filelock`, LOCK_NAME) on the output_dir, and HOLDER_NAME names the holder (host, pid, start
time). A second run is refused at once with that information. The operating system drops the lock
when its process dies; a holder record left behind by a killed run is reported as stale and replaced.

A run that trained and saved but failed a later step (the report) is not finished: FAILED_NAME
says which step failed and how to redo it (`jointobj report RUN_DIR`); RECORD_NAME holds what that
needs (base, sets, report options, seed).

A run is its checkpoint-N directories plus the files in RUN_FILES (the saved adapter or model,
jointobj.json, `latest`, finished.json). A directory holding any of them is refused unless the
user resumes it or passes --overwrite_output_dir, which deletes those (and nothing else).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from jointobj.model.conventions import CONFIG_NAME
from jointobj.training.checkpoints import LATEST_NAME, checkpoints_in, discard_checkpoint
from jointobj.utils.errors import UserError

FINISHED_NAME = "finished.json"  # written after the final save and report: the step the run finished at
RECORD_NAME = "recipe.json"  # written after the final save: what `jointobj report` needs to redo the report
FAILED_NAME = "failed.json"  # a step after the save failed: which, why, and how to redo it
LOCK_NAME = ".jointobj-run.lock"  # the advisory lock a running recipe holds
HOLDER_NAME = ".jointobj-run.json"  # who holds it: host, pid, start time
RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "model.safetensors", CONFIG_NAME, LATEST_NAME,
             FINISHED_NAME, RECORD_NAME, FAILED_NAME)


def previous_run(output_dir: str | os.PathLike) -> list[str]:
    """The names in `output_dir` that a run wrote (empty when it holds none)."""
    output_dir = Path(output_dir)
    found = [checkpoint.name for checkpoint in checkpoints_in(output_dir)]
    return found + [name for name in RUN_FILES if (output_dir / name).exists()]


def check_previous_run(output_dir: str | os.PathLike, resume: str | None, overwrite: bool) -> None:
    """Refuse to start a new run over one already in `output_dir`, naming both ways on."""
    found = previous_run(output_dir)
    failed = failed_step(output_dir)
    if failed and not overwrite:
        raise UserError(f"output_dir {output_dir} holds a run whose {failed['step']} step failed ({failed['error']}); "
                        f"{failed['redo']}, start over with --overwrite_output_dir, or pass another --output_dir")
    if found and not resume and not overwrite:
        shown = ", ".join(found[:4]) + (" ..." if len(found) > 4 else "")
        raise UserError(
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


def _write_json(path: Path, value: dict) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(staging, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def mark_finished(output_dir: str | os.PathLike, step: int) -> None:
    """The run is done (trained, saved, reported); clears a failed step's record."""
    _write_json(Path(output_dir) / FINISHED_NAME, {"global_step": step})
    (Path(output_dir) / FAILED_NAME).unlink(missing_ok=True)


def mark_failed(output_dir: str | os.PathLike, step: str, error: BaseException, global_step: int, redo: str) -> None:
    """Record that `step` failed after training (the run is not finished); `redo` says how to redo it."""
    _write_json(Path(output_dir) / FAILED_NAME, {"step": step, "error": f"{type(error).__name__}: {error}",
                                                 "global_step": global_step, "redo": redo})


def failed_step(output_dir: str | os.PathLike) -> dict | None:
    """The failed-step record of the run in `output_dir` (step, error, global_step, redo), or None."""
    return _read_json(Path(output_dir) / FAILED_NAME)


def write_run_record(output_dir: str | os.PathLike, record: dict) -> None:
    """What the run was (base, sets, report options, seed): enough to redo its report."""
    _write_json(Path(output_dir) / RECORD_NAME, record)


def read_run_record(output_dir: str | os.PathLike) -> dict:
    record = _read_json(Path(output_dir) / RECORD_NAME)
    if record is None:
        raise UserError(f"{output_dir} holds no {RECORD_NAME}: it is not a recipe run directory whose model was saved "
                        "(or an older jointobj wrote it); pass the --output_dir of a recipe run")
    return record


# ---------------------------------------------------------------- one run per directory


def _holder_text(holder: dict | None) -> str:
    if not holder:
        return "a run whose holder record is missing"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike) -> Iterator[dict]:
    """Hold the exclusive run lock on `output_dir` (created if missing) for the block; refuse at once
    (UserError naming host, pid and start time) if another run holds it. Yields the holder record."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output_dir / LOCK_NAME, timeout=0)
    holder_path = output_dir / HOLDER_NAME
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"output_dir {output_dir} is in use by another run ({_holder_text(_read_json(holder_path))}; lock file "
            f"{output_dir / LOCK_NAME}). Two runs in one directory overwrite each other: wait for it to end, stop it, "
            "or pass another --output_dir"
        ) from None
    try:
        stale = _read_json(holder_path)
        if stale is not None:  # we hold the lock, so its writer ended without releasing it (killed)
            pid = stale.get("pid")
            gone = ("its process is gone" if stale.get("host") == socket.gethostname() and isinstance(pid, int)
                    and not _process_alive(pid) else "its lock was released")
            print(f"{output_dir}: recovered a stale run lock ({_holder_text(stale)}; {gone})", flush=True)
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        _write_json(holder_path, holder)
        try:
            yield holder
        finally:
            holder_path.unlink(missing_ok=True)
    finally:
        lock.release()


def finished_step(output_dir: str | os.PathLike) -> int | None:
    """The step the run in `output_dir` finished at, or None if it has not finished."""
    path = Path(output_dir) / FINISHED_NAME
    return json.loads(path.read_text())["global_step"] if path.is_file() else None

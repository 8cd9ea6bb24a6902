"""Checkpoints that are never half-loaded, never lost to rotation, and chosen on resume by what is on disk.

    write_manifest(run / "checkpoint-8")          # after every rank's files are written: the save is now complete
    resume_checkpoint(run, "latest")              # the newest complete, verified checkpoint (CheckpointError if none)
    rotate_checkpoints(run, limit=2, keep=run / "checkpoint-8")

A checkpoint is complete when its `manifest.json` (file names, sizes, sha256) is there and every
file still matches it. The manifest is written last and atomically (a temporary file renamed into
place), so a save killed at any point leaves a checkpoint without one, which resume skips. The
`latest` file in the run directory names the newest recorded checkpoint; it is a hint for people and
tools, while resume trusts only the manifests. Rotation deletes only older checkpoints, and only once
the one just written is complete and recorded; it removes a checkpoint's manifest before its files,
so a kill mid-deletion leaves an incomplete checkpoint, never one that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from jointobj.utils.errors import UserError

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "latest"  # in the run directory: the name of the newest recorded checkpoint
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
_STAGING_SUFFIX = ".tmp"


class CheckpointError(UserError):
    """A checkpoint that must not be loaded, or no checkpoint to resume from; the message says what to do."""


def checkpoint_step(path: str | os.PathLike) -> int | None:
    match = CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints_in(run_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint-N directory of the run, complete or not, oldest (lowest N) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [path for path in run_dir.iterdir() if path.is_dir() and checkpoint_step(path) is not None]
    return sorted(found, key=checkpoint_step)


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    staging = path.with_name(path.name + _STAGING_SUFFIX)
    with staging.open("w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staging, path)  # readers see the old file or the new one, never half of one


def write_manifest(checkpoint: str | os.PathLike, config: dict | None = None) -> Path:
    """Record every file of `checkpoint` (relative name, size, sha256) in its manifest, with the run's
    configuration fingerprint `config` (what a resume must not change, see check_same_config); call it
    once every rank has finished writing. Returns the manifest's path."""
    checkpoint = Path(checkpoint)
    files = {}
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        name = path.relative_to(checkpoint).as_posix()
        if name in (MANIFEST_NAME, MANIFEST_NAME + _STAGING_SUFFIX):
            continue
        files[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = checkpoint / MANIFEST_NAME
    record = {"step": checkpoint_step(checkpoint), "files": files}
    if config is not None:
        record["config"] = config
    _atomic_write(manifest, json.dumps(record, indent=1) + "\n")
    return manifest


def check_same_config(checkpoint: str | os.PathLike, config: dict | None, allow_changes: bool = False) -> None:
    """Refuse (CheckpointError naming each field) to resume `checkpoint` under a configuration whose
    fingerprint differs from the one its manifest recorded, unless `allow_changes` (then say what changed).
    A manifest without a fingerprint (an older jointobj) or no `config` checks nothing."""
    if config is None:
        return
    try:
        recorded = json.loads((Path(checkpoint) / MANIFEST_NAME).read_text()).get("config")
    except (OSError, json.JSONDecodeError):
        return
    if recorded is None:
        return
    changed = [f"{name}: {recorded.get(name)!r} -> {config.get(name)!r}" for name in sorted(set(recorded) | set(config))
               if recorded.get(name) != config.get(name)]
    if not changed:
        return
    if allow_changes:
        print(f"--resume_with_changed_config: resuming {checkpoint} with {'; '.join(changed)}", flush=True)
        return
    raise CheckpointError(
        f"not resuming from {checkpoint}: this run's configuration differs from the one that wrote it "
        f"({'; '.join(changed)}). Resuming would continue another objective, data or model from its weights. Put "
        "those values back, start over with --overwrite_output_dir (or another --output_dir), or pass "
        "--resume_with_changed_config to resume anyway."
    )


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why `checkpoint` must not be loaded (no manifest, a file missing, resized, altered or unlisted),
    or None when it is complete and every file matches its manifest."""
    checkpoint = Path(checkpoint)
    manifest = checkpoint / MANIFEST_NAME
    if not checkpoint.is_dir():
        return "it does not exist"
    if not manifest.is_file():
        return f"it has no {MANIFEST_NAME} (its save did not complete)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return f"its {MANIFEST_NAME} is unreadable ({error})"
    on_disk = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    unlisted = sorted(on_disk - set(files))
    if unlisted:
        return f"it holds files its {MANIFEST_NAME} does not list: {', '.join(unlisted[:5])}"
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, its manifest says {expected['size']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256 in {MANIFEST_NAME} (altered or damaged)"
    return None


def newest_complete_checkpoint(run_dir: str | os.PathLike,
                               before_step: int | None = None) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint that verifies, or None; a line per newer one skipped and why).
    `before_step`: consider only checkpoints of lower steps."""
    skipped = []
    for checkpoint in reversed(checkpoints_in(run_dir)):
        if before_step is not None and checkpoint_step(checkpoint) >= before_step:
            continue
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint.name}: {problem}")
    return None, skipped


def read_latest(run_dir: str | os.PathLike) -> str | None:
    pointer = Path(run_dir) / LATEST_NAME
    return pointer.read_text().strip() if pointer.is_file() else None


def write_latest(run_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> None:
    _atomic_write(Path(run_dir) / LATEST_NAME, f"{Path(checkpoint).name}\n")


def resume_checkpoint(run_dir: str | os.PathLike, requested: str) -> Path:
    """The checkpoint to resume from: for "latest", the newest complete, verified one of `run_dir`
    (`latest` is only a hint); for a path, that checkpoint once it verifies. CheckpointError otherwise."""
    if requested != "latest":
        problem = checkpoint_problem(requested)
        if problem is not None:
            raise CheckpointError(
                f"not resuming from {requested}: {problem}. Resume only from checkpoints a completed save wrote "
                f"(--resume_from_checkpoint latest picks the newest complete one)."
            )
        step = checkpoint_step(requested)
        newer = [path.name for path in checkpoints_in(run_dir)
                 if step is not None and checkpoint_step(path) > step and checkpoint_problem(path) is None]
        if newer:  # the abandoned run's: a later "latest" would resume it, and rotation would never remove it
            raise CheckpointError(
                f"not resuming from {requested}: {run_dir} holds newer complete checkpoints ({', '.join(newer)}) of "
                "the run you would abandon; a later --resume_from_checkpoint latest would pick them up. Move them out "
                "of the output_dir (keep them elsewhere if you may want them), then resume again."
            )
        return Path(requested)
    chosen, skipped = newest_complete_checkpoint(run_dir)
    if chosen is None:
        reasons = "; ".join(skipped) if skipped else "it holds no checkpoint-N directory"
        raise CheckpointError(
            f"no complete checkpoint to resume from in {run_dir} ({reasons}). Start a new run with "
            "--overwrite_output_dir (or another --output_dir), or resume from a checkpoint you copied elsewhere."
        )
    hint = read_latest(run_dir)
    notes = [f"skipped {line}" for line in skipped]
    if hint is not None and hint != chosen.name:
        notes.append(f"'{LATEST_NAME}' named {hint}")
    print(f"resuming from {chosen}, the newest complete, verified checkpoint"
          + (f" ({'; '.join(notes)})" if notes else ""), flush=True)
    return chosen


def discard_checkpoint(checkpoint: str | os.PathLike) -> None:
    """Delete a checkpoint, its manifest first: a kill mid-way leaves an incomplete checkpoint."""
    checkpoint = Path(checkpoint)
    (checkpoint / MANIFEST_NAME).unlink(missing_ok=True)
    shutil.rmtree(checkpoint, ignore_errors=True)


def rotate_checkpoints(run_dir: str | os.PathLike, limit: int | None, keep: str | os.PathLike,
                       protect: str | os.PathLike | None = None) -> list[Path]:
    """Once `keep` (the checkpoint just written) is complete and recorded in `latest`, delete older
    checkpoints beyond `limit`, oldest first, and incomplete ones older than `keep`. Never deletes
    `keep`, `protect` (e.g. the best checkpoint) or anything newer than `keep`. Returns what it deleted."""
    keep = Path(keep)
    if checkpoint_problem(keep) is not None or read_latest(run_dir) != keep.name:
        raise CheckpointError(f"rotation refused: {keep} is not complete and recorded in '{LATEST_NAME}'")
    older = [c for c in checkpoints_in(run_dir) if checkpoint_step(c) < checkpoint_step(keep)]
    protected = {keep.resolve()} | ({Path(protect).resolve()} if protect else set())
    complete = [c for c in older if (c / MANIFEST_NAME).is_file()]
    deleted = [c for c in older if not (c / MANIFEST_NAME).is_file()]
    if limit is not None and limit > 0:
        excess = len(complete) + 1 - limit  # + 1: keep itself counts against the limit
        deleted += [c for c in complete if c.resolve() not in protected][:max(0, excess)]
    for checkpoint in deleted:
        discard_checkpoint(checkpoint)
    return deleted

"""One run per directory: a run lock on --output_dir, resumes that keep their configuration, and a report
that must succeed before a run counts as finished.

Each test names the old behaviour it fails against.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jointobj.training.recipe as recipe_module
from jointobj.training.checkpoints import CheckpointError
from jointobj.training.recipe import run_recipe
from jointobj.training.run_dir import FAILED_NAME, FINISHED_NAME, HOLDER_NAME, run_lock
from jointobj.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
HOLD = textwrap.dedent("""
    import os, sys, time
    from jointobj.training.run_dir import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        if sys.argv[2] == "die":
            os._exit(0)  # killed: the holder record stays behind, the OS drops the lock
        time.sleep(120)
""")


def tiny_args(output_dir: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(output_dir), "--deepspeed", "", "--max_steps", "2", "--per_device_train_batch_size",
            "4", "--samples_per_toyset", "16", "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm",
            "true", "--report_to", "none", "--dataset", "likes_tennis,cities", *extra]


def hold_lock(output_dir: Path, how: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(output_dir), how], stdout=subprocess.PIPE, text=True,
                              env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_concurrent_run_is_refused_at_once_naming_the_holder(tiny_model_dir, tmp_path):
    # Fails against the old recipe: both runs trained into one output_dir, exit 0, one run silently lost.
    holder = hold_lock(tmp_path / "out", "hold")
    try:
        with pytest.raises(UserError, match=rf"output_dir .*out is in use by another run \(pid {holder.pid} on host "
                                            rf".*, started .*; lock file .*\.jointobj-run\.lock\)"):
            run_recipe(["--model_name_or_path", str(tiny_model_dir), *tiny_args(tmp_path / "out")])
    finally:
        holder.kill()
        holder.wait()
    assert not any((tmp_path / "out").glob("adapter_*"))  # nothing was trained or written


def test_a_stale_lock_of_a_dead_process_is_named_and_recovered(tmp_path, capsys):
    # Fails without a lock: there is no holder record to recover, and no message.
    holder = hold_lock(tmp_path / "out", "die")
    holder.wait()
    assert (tmp_path / "out" / HOLDER_NAME).exists()
    with run_lock(tmp_path / "out") as record:
        assert record["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"recovered a stale run lock (pid {holder.pid} on host" in out and "its process is gone" in out
    assert not (tmp_path / "out" / HOLDER_NAME).exists()  # released with the block


@pytest.mark.slow  # runs the recipe
def test_resuming_with_a_changed_objective_or_data_is_refused_unless_overridden(tiny_model_dir, tmp_path):
    # Fails against the old recipe: the checkpoint of one objective and data resumed under another, silently.
    args = ["--model_name_or_path", str(tiny_model_dir), *tiny_args(tmp_path / "out", "--save_strategy", "steps",
                                                                    "--save_steps", "1")]
    run_recipe([*args, "--max_steps", "1"])
    manifest = json.loads((tmp_path / "out" / "checkpoint-1" / "manifest.json").read_text())
    assert manifest["config"]["objective"] == "logsum" and manifest["config"]["dataset"] == "likes_tennis,cities"
    changed = ["--resume_from_checkpoint", "latest", "--max_steps", "2", "--objective", "token_ce"]
    with pytest.raises(CheckpointError, match=r"differs from the one that wrote it \(dataset: 'likes_tennis,cities' "
                                              r"-> 'likes_tennis'; objective: 'logsum' -> 'token_ce'\).*"
                                              r"--resume_with_changed_config"):
        run_recipe([*args, *changed, "--dataset", "likes_tennis"])
    result = run_recipe([*args, *changed, "--resume_with_changed_config", "true"])
    assert result.trainer.state.global_step == 2


def embedded_base(tiny_model_dir: Path, directory: Path, sets: str) -> Path:
    """The session's tiny model as an embedded base for `sets` (its record says so): no pretraining."""
    shutil.copytree(tiny_model_dir, directory)
    (directory / "embedded.json").write_text(json.dumps({"toysets": sets.split(",")}))
    return directory


@pytest.mark.slow  # runs the recipe and the report
def test_a_failed_report_leaves_the_run_unfinished_and_jointobj_report_writes_it(tiny_model_dir, tmp_path,
                                                                                monkeypatch, capsys):
    # Fails against the old recipe: finished.json was written before the report, which then died; reruns were
    # refused and "latest" said "nothing to resume": the report could not be had without training again.
    from jointobj.cli import main as jointobj_main

    base = embedded_base(tiny_model_dir, tmp_path / "base", "likes_tennis,cities")
    args = ["--base_dir", str(base), *tiny_args(tmp_path / "out", "--report_samples", "4", "--report_decoders", "l2r",
                                                "--report_tokens_per_step", "1")]
    real_report = recipe_module.report_run

    def broken_report(*args, **kwargs):
        raise RuntimeError("the plot library is missing")

    monkeypatch.setattr(recipe_module, "report_run", broken_report)
    with pytest.raises(RuntimeError, match="plot library"):
        run_recipe(args)
    out = tmp_path / "out"
    assert not (out / FINISHED_NAME).exists()
    failed = json.loads((out / FAILED_NAME).read_text())
    assert failed["step"] == "report" and failed["global_step"] == 2 and "jointobj report" in failed["redo"]
    assert f"the report failed; fix it and write the report with `jointobj report {out}`" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"holds a run whose report step failed .*jointobj report"):
        run_recipe([*args, "--resume_from_checkpoint", "latest"])
    monkeypatch.setattr(recipe_module, "report_run", real_report)
    rows = jointobj_main(["report", str(out)])
    assert {row["model"] for row in rows} == {"base", "fine-tuned", "oracle"} and (out / "report.json").exists()
    assert json.loads((out / FINISHED_NAME).read_text())["global_step"] == 2 and not (out / FAILED_NAME).exists()


@pytest.mark.slow  # runs the recipe and the report
def test_jointobj_report_on_a_model_name_or_path_run(tiny_model_dir, tmp_path):
    # Fails against the old CLI: there was no `jointobj report`, and such a run recorded neither sets nor base.
    from jointobj.cli import main as jointobj_main

    run_recipe(["--model_name_or_path", str(tiny_model_dir), *tiny_args(tmp_path / "out")])
    rows = jointobj_main(["report", str(tmp_path / "out"), "--samples", "4", "--decoders", "l2r",
                          "--tokens-per-step", "1"])
    assert {(row["model"], row["toyset"]) for row in rows} == {
        (model, toyset) for model in ("base", "fine-tuned", "oracle") for toyset in ("likes_tennis", "cities")}

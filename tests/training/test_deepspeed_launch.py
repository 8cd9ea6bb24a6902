"""The deepspeed launcher with two CPU ranks runs the log-sum recipe under ZeRO-2 and ZeRO-3.

The data mixes two toy sets of different lengths and `max_rows` is small, so the two ranks
score different numbers of block rows per step: under ZeRO-3 (exact gradient, checkpointed
block forwards, self-conditioning on half the steps) every forward gathers the weights
collectively, and a rank that ran fewer forwards than the other would hang the job.

Checks: the run ends, the loss is finite, the adapter is written in PEFT format, and the
adapter reloaded in this process gives the logits the trained (sharded) model gave inside
the launched ranks.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jointobj import Denoiser

from helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "logsum"


@pytest.fixture
def base_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.mark.slow  # two launched ranks, a few minutes on two CPU cores
@pytest.mark.parametrize(("zero", "objective", "mode", "self_condition"),
                         [("zero2", "mixture", "sampled", "0"), ("zero3", "logsum", "exact", "0.5")])
def test_two_cpu_ranks_train_and_save_a_reloadable_adapter(zero, objective, mode, self_condition, base_dir, tmp_path):
    output_dir = tmp_path / "run"
    logsum = {"mode": mode, "max_rows": 8, "self_condition_prob": float(self_condition)}
    kwargs = {"logsum": logsum, "token_ce": {"self_condition_prob": float(self_condition)}} if objective == "mixture" \
        else logsum
    command = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
        str(ROOT / "tests" / "launched_recipe.py"), "--config", str(ROOT / "recipes" / "configs" / f"{RECIPE}.yaml"),
        "--model_name_or_path", str(base_dir), "--dataset", "cities,agreement", "--samples_per_toyset", "64",
        "--objective", objective, "--objective_kwargs", json.dumps(kwargs),
        "--deepspeed", str(ROOT / "ds_configs" / f"{zero}.json"), "--output_dir", str(output_dir),
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "3",
        "--disable_tqdm", "true", "--report_samples", "0",
        "--train_for", "", "--token_ce_step_ratio", "0",  # the objective given here, not the main job's; no baseline
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    state = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert (output_dir / "adapter_model.safetensors").exists() and not (output_dir / "model.safetensors").exists()

    probe = torch.load(output_dir / "probe.pt")
    reloaded = Denoiser.from_pretrained(output_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=probe["input_ids"]), probe["logits"], atol=1e-4, rtol=1e-4)
    untrained = Denoiser.from_pretrained(base_dir).eval()
    with torch.no_grad():  # the check above can fail: training moved the logits (under ZeRO-3 through the
        # checkpointed log-sum block forwards alone, which reach the weights only with a grad-requiring input)
        assert not torch.allclose(untrained(input_ids=probe["input_ids"]), probe["logits"], atol=1e-4)


@pytest.mark.slow  # two launched ranks, a few minutes on two CPU cores
@pytest.mark.parametrize("max_rows", [8, 1024])
def test_two_cpu_ranks_train_on_decoder_orders_under_zero3(max_rows, base_dir, tmp_path):
    # The decoder-order pass runs as many forwards as the data asks (one token per step on cities'
    # 2-token and agreement's 5-token answers; a threshold decoder that may finish early), so the
    # ranks' counts differ unless they agree them (decoder_law.decoder_blocks); a rank that ran
    # fewer would hang in ZeRO-3's weight gather: the subprocess timeout turns a hang into a failure.
    # max_rows 8: blocks found without grad, scored in checkpointed chunks; 1024 (the main job's):
    # the pass run with grad is its own score (decoder_scores), padding forwards back-propagated too.
    # With 1024 the main job's KL terms too: the base read with the adapter off through the ZeRO-3 engine,
    # the start state deduplicated per rank (each rank's own count of distinct prompts and lengths).
    output_dir = tmp_path / "run"
    kwargs = {"token_ce_weight": 0.5, "logsum": {"orders": ["confidence", "threshold:threshold=0.5:steps=3"],
                                                 "max_rows": max_rows}}
    if max_rows == 1024:
        kwargs["token_ce"] = {"base_kl_start_weight": 100.0, "base_kl_weight": 1.0}
    command = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
        str(ROOT / "tests" / "launched_recipe.py"), "--config", str(ROOT / "recipes" / "configs" / f"{RECIPE}.yaml"),
        "--model_name_or_path", str(base_dir), "--dataset", "cities,agreement", "--samples_per_toyset", "64",
        "--objective", "mixture", "--objective_kwargs", json.dumps(kwargs),
        "--deepspeed", str(ROOT / "ds_configs" / "zero3.json"), "--output_dir", str(output_dir),
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "3",
        "--disable_tqdm", "true", "--report_samples", "0",
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    state = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    if max_rows == 1024:  # the adapter moves off its base from step 2 on: the KL terms are read and logged
        assert all("token_ce/base_kl_start" in row for row in state["log_history"] if "loss" in row)


@pytest.mark.slow  # two launched ranks per model, a few minutes on two CPU cores
@pytest.mark.parametrize("kind", ["llada_legacy", "dream_legacy"])
def test_two_cpu_ranks_train_the_4x_style_remote_models_under_zero2(kind, tmp_path):
    # LLaDA's and Dream's habits (tests/remote_models' *_legacy models, loaded through jointobj's
    # compatibility rules on transformers 5.x, as they are on 4.57): LoRA, TokenCE + log-sum, ZeRO-2,
    # two ranks; the adapter reloads in this process with the logits the ranks computed.
    import transformers

    from remote_models import LEGACY_QUIRKS, save_remote_model

    base = save_remote_model(kind, tmp_path / kind)
    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
        str(ROOT / "tests" / "launched_recipe.py"), "--config", str(ROOT / "recipes" / "configs" / f"{RECIPE}.yaml"),
        "--model_name_or_path", str(base), "--trust_remote_code", "--dataset", "likes_tennis,cities",
        "--samples_per_toyset", "32", "--objective", "mixture",
        "--objective_kwargs", json.dumps({"logsum": {"blocks": 2, "max_rows": 8}}),
        "--deepspeed", str(ROOT / "ds_configs" / "zero2.json"), "--output_dir", str(output_dir),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "2",
        "--disable_tqdm", "true", "--report_samples", "0",
        "--train_for", "", "--token_ce_step_ratio", "0",  # the objective given here, not the main job's; no baseline
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
                             [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    five = int(transformers.__version__.split(".")[0]) >= 5
    recorded = json.loads((output_dir / "jointobj.json").read_text()).get("compat_rules", [])
    assert set(recorded) == (set(LEGACY_QUIRKS[kind].values()) if five else set())
    probe = torch.load(output_dir / "probe.pt")
    reloaded = Denoiser.from_pretrained(output_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=probe["input_ids"]), probe["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # two launched ranks, a few minutes on two CPU cores
def test_two_cpu_ranks_train_the_draft_head_under_zero2_with_the_denoiser_frozen(base_dir, tmp_path):
    # recipes/draft_head.py's YAML on two ranks: each draws its own samples (likes_tennis and cities rows, so
    # the ranks run different numbers of forwards: fine under ZeRO-2), the head trains, the adapter does not.
    # Fails if the head is not saved or not trained under DeepSpeed, or if the frozen denoiser moves.
    from jointobj.model.draft_head import find_draft_head

    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
        str(ROOT / "tests" / "launched_recipe.py"), "--config", str(ROOT / "recipes" / "configs" / "draft_head.yaml"),
        "--model_name_or_path", str(base_dir), "--dataset", "likes_tennis,cities", "--samples_per_toyset", "32",
        "--deepspeed", str(ROOT / "ds_configs" / "zero2.json"), "--output_dir", str(output_dir),
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "3",
        "--warmup_steps", "0", "--disable_tqdm", "true",
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    state = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())
    logged = [row for row in state["log_history"] if "loss" in row]
    assert len(logged) == 3 and all(math.isfinite(row["loss"]) and 0 < row["acceptance"] <= 1 for row in logged)
    reloaded = Denoiser.from_pretrained(output_dir).eval()
    head = find_draft_head(reloaded)
    assert head.out.weight.abs().sum() > 0  # a fresh head's last layer is zero
    probe = torch.load(output_dir / "probe.pt")
    untrained = Denoiser.from_pretrained(base_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=probe["input_ids"]), probe["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(untrained(input_ids=probe["input_ids"]), probe["logits"], atol=1e-5, rtol=0)

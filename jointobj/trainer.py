"""JointObjTrainer: a `transformers.Trainer` whose loss is a jointobj objective.

    config = JointObjConfig(output_dir="runs/x", objective="logsum", blocks="all", max_steps=100)
    trainer = JointObjTrainer(denoiser, config, train_dataset=dataset)   # dataset: input_ids, prompt_mask
    trainer.train(resume_from_checkpoint="latest")   # the newest complete, verified checkpoint

It overrides `compute_loss` (trl's signature), `prediction_step` (so `evaluate()` scores the
objective on the eval set: `eval_loss` plus the objective's metrics as `eval_*`), `save_model`
(every save, checkpoints included, also writes jointobj.json), `log` (to add the objective's
metrics, e.g. the posterior mass per order family), and `train` / `_save_checkpoint` so that
checkpoints carry manifests, are verified before a resume loads them, and are rotated only once a
newer one is complete (jointobj.checkpoints); a non-finite loss or gradient norm stops the run
before anything from that step is saved. Everything else — loop, DeepSpeed, checkpoints, LR
schedule, logging — is the Trainer's. Objectives come from the `LOSSES` registry by name; each
builds itself from the config's fields with `from_config`.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from jointobj.batch import DiffusionCollator
from jointobj.checkpoints import (
    LATEST_NAME,
    MANIFEST_NAME,
    discard_checkpoint,
    newest_complete_checkpoint,
    resume_checkpoint,
    rotate_checkpoints,
    write_latest,
    write_manifest,
)
from jointobj.denoiser import Denoiser
from jointobj.losses import LOSSES
from jointobj.ranks import accelerator_available

LATEST = LATEST_NAME  # file in output_dir naming the newest recorded checkpoint (a hint; manifests decide)


@dataclass
class JointObjConfig(TrainingArguments):
    """TrainingArguments plus the objective's fields. On a machine with no accelerator (no CUDA,
    MPS, XPU, ...) it sets `use_cpu=True` itself, which several CPU ranks under DeepSpeed need to
    agree on the world size."""

    objective: str = field(
        default="logsum",
        metadata={"help": f"Training objective, one of: {', '.join(LOSSES.names())}."},
    )
    mask_schedule: str = field(default="linear", metadata={"help": "token_ce masking schedule: linear or cosine."})
    orders: str = field(
        default="l2r,r2l,random,random",
        metadata={"help": "logsum: comma-separated order families, one per sampled order (l2r, r2l, random)."},
    )
    blocks: str = field(
        default="all",
        metadata={"help": "logsum: K blocks per order (an int), or 'all' for the exact any-order AR likelihood."},
    )
    logsum_mode: str = field(
        default="exact",
        metadata={"help": "logsum gradient: 'exact' (autograd through logsumexp) or 'sampled' (one order from the "
                          "posterior)."},
    )
    max_rows: int | None = field(
        default=None,
        metadata={"help": "logsum: rows per forward when scoring orders (bounds memory)."},
    )
    token_ce_weight: float = field(
        default=0.5,
        metadata={"help": "mixture: lambda in lambda * token_ce + (1 - lambda) * logsum."},
    )
    energy_tokens_per_step: str = field(
        default="all",
        metadata={"help": "energy: tokens per step of the sampler that draws the negatives (an int), or 'all' for one"
                          " step."},
    )
    energy_negatives: int = field(default=1, metadata={"help": "energy: negatives drawn per training sequence (>= 1)."})
    energy_decoder: str = field(
        default="random",
        metadata={"help": "energy: the negatives' decoder (a registered policy: random, l2r, confidence, ...)."},
    )
    energy_parameterisation: str = field(
        default="residual",
        metadata={"help": "energy: 'residual' (p ∝ q exp(-E), EDLM) or 'absolute' (p ∝ exp(-E); needs l2r or one "
                          "step)."},
    )
    energy_token_ce_weight: float = field(
        default=0.0,
        metadata={"help": "energy: weight of the per-token CE added to the NCE loss (keeps the adapter a denoiser)."},
    )
    energy_head_width: int = field(
        default=0,
        metadata={"help": "energy: hidden width of the energy head (0: the model's hidden size)."},
    )
    self_condition_prob: float = field(
        default=0.0,
        metadata={"help": "token_ce / logsum / mixture: probability per step that the scored forward reads the "
                          "model's own detached predictions as soft inputs at masked positions (one extra forward "
                          "without grad), so soft-state decoding (--decoder soft) works; 0 = off, 0.5 is the usual "
                          "choice."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep prompt_mask: the objective needs it."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in an output_dir that holds one (its checkpoints and saved model are "
                          "deleted); without it such an output_dir is refused unless --resume_from_checkpoint is "
                          "given."},
    )

    def __post_init__(self) -> None:
        if self.objective not in LOSSES:
            raise ValueError(f"unknown objective {self.objective!r}; registered: {', '.join(LOSSES.names())}")
        if self.blocks != "all" and not str(self.blocks).isdigit():
            raise ValueError(f"blocks must be a positive integer or 'all', got {self.blocks!r}")
        if not 0.0 <= self.token_ce_weight <= 1.0:
            raise ValueError(f"token_ce_weight must lie in [0, 1], got {self.token_ce_weight}")
        k = str(self.energy_tokens_per_step)
        if k != "all" and not (k.isdigit() and int(k) >= 1):
            raise ValueError("energy_tokens_per_step must be a positive integer or 'all', "
                             f"got {self.energy_tokens_per_step!r}")
        from jointobj.decoding.registry import DECODERS

        DECODERS.get(self.energy_decoder)  # an unknown decoder fails here, listing the known ones
        if self.energy_negatives < 1:
            raise ValueError(f"energy_negatives must be >= 1 (negatives per sequence), got {self.energy_negatives}")
        if self.energy_token_ce_weight < 0 or self.energy_head_width < 0:
            raise ValueError("energy_token_ce_weight and energy_head_width must be >= 0 "
                             f"(got {self.energy_token_ce_weight} and {self.energy_head_width})")
        if not 0.0 <= self.self_condition_prob <= 1.0:
            raise ValueError("self_condition_prob must lie in [0, 1] (0 = off, 0.5 is usual), "
                             f"got {self.self_condition_prob}")
        if isinstance(self.deepspeed, str) and self.deepspeed:
            check_deepspeed_config(self.deepspeed)
        elif self.deepspeed == "":
            self.deepspeed = None  # `--deepspeed ""` on the command line turns a YAML's DeepSpeed off
        if not accelerator_available():
            self.use_cpu = True
        super().__post_init__()

    @property
    def order_list(self) -> list[str]:
        return [name.strip() for name in self.orders.split(",") if name.strip()]

    @property
    def block_count(self) -> int | str:
        return "all" if self.blocks == "all" else int(self.blocks)

    @property
    def energy_sampler_tokens_per_step(self) -> int | None:
        """energy_tokens_per_step as the negatives' sampler takes it: tokens per step, or None for
        the whole answer in one step."""
        return None if self.energy_tokens_per_step == "all" else int(self.energy_tokens_per_step)


def check_deepspeed_config(path: str) -> None:
    """Fail early, naming the file, on a DeepSpeed config that is missing or does not parse."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"DeepSpeed config {path} does not exist; see ds_configs/ for ready ones")
    try:
        json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON: {error}") from error


def build_objective(config: JointObjConfig) -> torch.nn.Module:
    """The registered objective named by `config.objective`, configured from the config's fields."""
    return LOSSES.get(config.objective).from_config(config)


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint of `output_dir` that is complete and verifies against its manifest (None
    if there is none); see jointobj.checkpoints."""
    checkpoint, _ = newest_complete_checkpoint(output_dir)
    return None if checkpoint is None else str(checkpoint)


class JointObjTrainer(Trainer):
    """Trainer over a `Denoiser`; `model` is the denoiser's own module (a PeftModel when it has
    LoRA, so checkpoints hold only the adapter)."""

    def __init__(self, denoiser: Denoiser, args: JointObjConfig, objective: torch.nn.Module | None = None,
                 **kwargs: Any):
        self.denoiser = denoiser
        self.objective = objective if objective is not None else build_objective(args)
        prepare = getattr(self.objective, "prepare", None)
        if callable(prepare):  # e.g. the energy objective attaches its head: before the optimizer exists
            prepare(denoiser)
        if "data_collator" not in kwargs:  # pads answers with EOS for a mask-blind model (see DiffusionCollator)
            kwargs["data_collator"] = DiffusionCollator.for_denoiser(denoiser)
        super().__init__(model=denoiser.model, args=args, **kwargs)
        # Objectives normalise per scorable token themselves: average micro-batches, don't re-scale by item count.
        self.model_accepts_loss_kwargs = False
        # Per split and metric: the sum over the steps that reported it, and how many did (a metric
        # may be absent on a step, e.g. an order family no order of this batch belongs to).
        self._metric_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float),
                                                                  "eval": defaultdict(float)}
        self._metric_counts: dict[str, dict[str, int]] = {"train": defaultdict(int), "eval": defaultdict(int)}
        # The checkpoint saved last, whose older siblings are rotated away once a forward from its
        # weights gives a finite loss: until then it may hold diverged weights and is not the only one kept.
        self._unconfirmed_checkpoint: Path | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """Trainer.train, resuming only from a complete, verified checkpoint: `True` or "latest" picks
        the newest one of output_dir (jointobj.checkpoints.resume_checkpoint); a path must verify."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = "latest"
        if resume_from_checkpoint:
            resume_from_checkpoint = str(resume_checkpoint(self.args.output_dir, str(resume_from_checkpoint)))
        output = super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)
        self._rotate_after_confirmation()  # training ended normally: the last checkpoint holds the result
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        denoiser = self.denoiser.routed_through(model)  # model may be the DeepSpeed engine
        try:
            output = self.objective(denoiser, inputs)
        except FloatingPointError as error:
            raise self._non_finite_stop(str(error)) from error
        if model.training:
            self._rotate_after_confirmation()  # the last checkpoint's weights gave a finite loss
        split = "train" if model.training else "eval"
        for name, value in output.metrics.items():
            self._metric_sums[split][name] = self._metric_sums[split][name] + torch.as_tensor(value).detach().float()
            self._metric_counts[split][name] += 1
        return (output.loss, output) if return_outputs else output.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The objective's loss on an eval batch (no logits or labels: a dLLM objective has none to
        gather). compute_loss adds the objective's metrics to the eval sums, which `log` reports
        as eval_*; the Trainer averages the losses into eval_loss."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as the Trainer does (the adapter only, with LoRA), then jointobj.json: the mask id and
        the energy head's settings, so every checkpoint-N reloads with Denoiser.from_pretrained."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:  # process zero (each node's, with save_on_each_node)
            directory = Path(output_dir if output_dir is not None else self.args.output_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self.denoiser.save_settings(directory)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's save with rotation held back: checkpoint-N is written (a stale directory of that
        name removed first), then, once every rank's files are on disk, its manifest and `latest`; older
        checkpoints are rotated away only after a forward from its weights gives a finite loss."""
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint = run_dir / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and checkpoint.exists():  # left by a killed or abandoned run: never mixed in
            discard_checkpoint(checkpoint)
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # the Trainer's rotation would run before the save is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's shards are written
        if self.args.should_save:
            write_manifest(checkpoint)
            write_latest(run_dir, checkpoint)
        self.accelerator.wait_for_everyone()
        self._unconfirmed_checkpoint = checkpoint

    def _rotate_after_confirmation(self) -> None:
        checkpoint, self._unconfirmed_checkpoint = self._unconfirmed_checkpoint, None
        if checkpoint is not None and self.args.should_save:
            rotate_checkpoints(checkpoint.parent, self.args.save_total_limit, keep=checkpoint,
                               protect=self.state.best_model_checkpoint)

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs) -> None:
        """Stop before logging or saving a step whose gradient norm was not finite (its update may
        have written NaN or inf into the weights)."""
        # fp16's loss scaler skips a step whose gradients overflowed (the weights are untouched): no divergence.
        skipped = getattr(self.accelerator, "optimizer_step_was_skipped", False)
        if grad_norm is not None and not math.isfinite(float(grad_norm)) and not skipped:
            raise self._non_finite_stop(f"the gradient norm of step {self.state.global_step} is {float(grad_norm)}")
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _non_finite_stop(self, what: str) -> FloatingPointError:
        """The error that stops a run whose loss or gradient went non-finite at this step. A checkpoint
        of this step (whose weights gave it) loses its manifest, so resume skips it; the message names the
        newest checkpoint whose weights still gave a finite loss."""
        step = self.state.global_step
        run_dir = Path(self.args.output_dir)
        suspect = run_dir / f"checkpoint-{step}"
        # Only a checkpoint no finite loss has confirmed yet is suspect: a confirmed one (a finite forward
        # from its weights already rotated its older siblings away, e.g. an earlier micro-batch of this
        # step, or training before an evaluation) may be the only complete checkpoint left.
        unconfirmed = suspect == self._unconfirmed_checkpoint
        if self.args.should_save and unconfirmed and suspect.is_dir():
            (suspect / MANIFEST_NAME).unlink(missing_ok=True)
        good, _ = newest_complete_checkpoint(run_dir, before_step=step if unconfirmed else step + 1)
        if self.args.should_save and good is not None:
            write_latest(run_dir, good)
        elif self.args.should_save:
            (run_dir / LATEST_NAME).unlink(missing_ok=True)
        if good is None:
            where = "No checkpoint before this step exists to resume from; lower the learning rate and start again."
        else:
            where = (f"The last checkpoint whose weights gave a finite loss is {good}; resume from it "
                     "(--resume_from_checkpoint latest) with a lower learning rate or stronger clipping.")
        return FloatingPointError(f"stopped at step {step}: {what}. Nothing was saved from this step. {where}")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for name, total in self._metric_sums[split].items():  # the mean over the steps that reported it
            logs[f"{prefix}{name}"] = round(float(total) / self._metric_counts[split][name], 4)
        self._metric_sums[split].clear()
        self._metric_counts[split].clear()
        super().log(logs, start_time)

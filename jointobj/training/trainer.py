"""JointObjTrainer: a `transformers.Trainer` whose loss is a jointobj objective.

    config = JointObjConfig(output_dir="runs/x", objective="logsum", objective_kwargs={"blocks": 4}, max_steps=100)
    trainer = JointObjTrainer(denoiser, config, train_dataset=dataset)   # dataset: input_ids, prompt_mask
    trainer.train(resume_from_checkpoint="latest")   # the newest complete, verified checkpoint

It overrides `compute_loss` (trl's signature), `prediction_step` (so `evaluate()` scores the
objective on the eval set: `eval_loss` plus the objective's metrics as `eval_*`), `save_model`
(every save, checkpoints included, also writes jointobj.json), `log` (to add the objective's
metrics, e.g. the posterior mass per order family), and `train` / `_save_checkpoint` so that
checkpoints carry manifests, are verified before a resume loads them, and are rotated only once a
newer one is complete (jointobj.training.checkpoints); a non-finite loss or gradient norm stops the run
before anything from that step is saved. Everything else — loop, DeepSpeed, checkpoints, LR
schedule, logging — is the Trainer's. The objective is `LOSSES.build(objective, objective_kwargs)`:
the class registered under that name, called with those keyword arguments (its constructor checks them).
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

from jointobj.decoding.decoder_law import parse_decoder_orders
from jointobj.diffusion.batch import DiffusionCollator
from jointobj.model.denoiser import Denoiser
from jointobj.objectives import LOSSES, Objective
from jointobj.training.checkpoints import (
    LATEST_NAME,
    MANIFEST_NAME,
    check_same_config,
    discard_checkpoint,
    newest_complete_checkpoint,
    resume_checkpoint,
    rotate_checkpoints,
    write_latest,
    write_manifest,
)
from jointobj.utils.ranks import accelerator_available

LATEST = LATEST_NAME  # file in output_dir naming the newest recorded checkpoint (a hint; manifests decide)


@dataclass
class JointObjConfig(TrainingArguments):
    """TrainingArguments plus the objective: its registered name and keyword arguments. On a
    machine with no accelerator (no CUDA, MPS, XPU, ...) it sets `use_cpu=True` itself, which
    several CPU ranks under DeepSpeed need to agree on the world size."""

    objective: str = field(
        default="logsum",
        metadata={"help": f"Training objective, one of: {', '.join(LOSSES.names())}."},
    )
    objective_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "The objective's keyword arguments: a mapping in YAML, JSON on the command line, e.g. "
                          "--objective logsum --objective_kwargs '{\"blocks\": 4, \"mode\": \"sampled\"}'. Each "
                          "objective's class (jointobj.objectives: TokenCELoss, LogSumOrdersLoss, MixtureLoss, "
                          "EnergyNCELoss, DraftDistillationLoss) documents its own; its `seed` defaults to --seed."},
    )
    train_for: str | None = field(
        default=None,
        metadata={"help": "Decoders and budgets to train for, comma-separated decoder specs (a list in YAML): e.g. "
                          "'confidence:tokens_per_step=2' or 'confidence:steps=2,threshold:threshold=0.7:steps=3'. "
                          "The log-sum's orders (objective logsum, or mixture's logsum part) become exactly those "
                          "decoders' own orders at their budgets, whose likelihood is the decoder's law "
                          "(jointobj/decoding/decoder_law.py); the recipe's report evaluates them first."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep prompt_mask: the objective needs it."})
    resume_with_changed_config: bool = field(
        default=False,
        metadata={"help": "Resume even when the objective, data or base model differ from the ones the checkpoint "
                          "was written with (refused by default, naming the fields that differ)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in an output_dir that holds one (its checkpoints and saved model are "
                          "deleted); without it such an output_dir is refused unless --resume_from_checkpoint is "
                          "given."},
    )

    def __post_init__(self) -> None:
        self.objective_kwargs = parse_objective_kwargs(self.objective_kwargs)
        if self.train_for:
            LOSSES.get(self.objective)  # an unknown name is named as such first, listing the known ones
            self.objective_kwargs = objective_kwargs_for(self.objective, self.objective_kwargs, self.train_for)
        build_objective(self)  # the objective's constructor checks its name and every value, now, not at step 1
        if isinstance(self.deepspeed, str) and self.deepspeed:
            check_deepspeed_config(self.deepspeed)
        elif self.deepspeed == "":
            self.deepspeed = None  # `--deepspeed ""` on the command line turns a YAML's DeepSpeed off
        if not accelerator_available():
            self.use_cpu = True
        super().__post_init__()


def parse_objective_kwargs(value: dict | str | None) -> dict:
    """objective_kwargs as a dict: a mapping as given, JSON text parsed (the command line), None as {}."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"objective_kwargs must be a JSON object, e.g. '{{\"blocks\": 4}}'; could not parse "
                             f"{value!r}: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"objective_kwargs must be a mapping of argument names to values, got {value!r}")
    return value


def objective_kwargs_for(objective: str, kwargs: dict, train_for: str) -> dict:
    """The objective's kwargs with its log-sum orders set to the decoders of `train_for` (their specs, checked):
    `orders` of logsum, `logsum.orders` of mixture; a proposal mixture or prior there is dropped (decoder
    orders take weights 1/M). Other objectives have no orders to set and are refused."""
    orders = [str(order) for order in parse_decoder_orders(train_for)]
    if not orders:
        raise ValueError(f"train_for {train_for!r} names no decoder; e.g. 'confidence:tokens_per_step=2'")
    drop = ("mixture", "num_orders", "prior")
    if objective == "logsum":
        return {**{k: v for k, v in kwargs.items() if k not in drop}, "orders": orders}
    if objective == "mixture":
        part = dict(kwargs.get("logsum") or {})
        return {**kwargs, "logsum": {**{k: v for k, v in part.items() if k not in drop}, "orders": orders}}
    raise ValueError(f"train_for trains the log-sum's orders: use --objective mixture (TokenCE + the decoders' "
                     f"likelihood, the recipe's default) or logsum, not {objective!r}")


def build_objective(config: JointObjConfig) -> torch.nn.Module:
    """The objective registered as `config.objective`, built from `config.objective_kwargs` (its
    constructor validates them); `seed` defaults to the run's --seed."""
    kwargs = parse_objective_kwargs(config.objective_kwargs)
    LOSSES.get(config.objective)  # an unknown name fails alone, listing the known ones
    try:
        return LOSSES.build(config.objective, kwargs, seed=config.seed)
    except (TypeError, ValueError) as error:
        raise ValueError(f"objective {config.objective!r} with objective_kwargs {kwargs}: {error}") from error


def check_deepspeed_config(path: str) -> None:
    """Fail early, naming the file, on a DeepSpeed config that is missing or does not parse."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"DeepSpeed config {path} does not exist; see ds_configs/ for ready ones")
    try:
        json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON: {error}") from error


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint of `output_dir` that is complete and verifies against its manifest (None
    if there is none); see jointobj.training.checkpoints."""
    checkpoint, _ = newest_complete_checkpoint(output_dir)
    return None if checkpoint is None else str(checkpoint)


class JointObjTrainer(Trainer):
    """Trainer over a `Denoiser`; `model` is the denoiser's own module (a PeftModel when it has
    LoRA, so checkpoints hold only the adapter)."""

    def __init__(self, denoiser: Denoiser, args: JointObjConfig, objective: torch.nn.Module | None = None,
                 **kwargs: Any):
        self.denoiser = denoiser
        self.objective = objective if objective is not None else build_objective(args)
        if not isinstance(self.objective, Objective):
            raise TypeError(f"the objective is a {type(self.objective).__name__}; subclass "
                            "jointobj.objectives.Objective (its defaults: nothing to prepare, one scorable token, no "
                            "block forwards) and return a LossOutput from forward(denoiser, batch)")
        self.objective.prepare(denoiser)  # e.g. the energy objective attaches its head: before the optimizer exists
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
        # What a resume must not change (objective, data, base model), recorded in every checkpoint's manifest;
        # the recipe sets it (jointobj.training.recipe.config_fingerprint); None records and checks nothing.
        self.run_config: dict | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """Trainer.train, resuming only from a complete, verified checkpoint: `True` or "latest" picks
        the newest one of output_dir (jointobj.training.checkpoints.resume_checkpoint); a path must verify."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = "latest"
        if resume_from_checkpoint:
            resume_from_checkpoint = str(resume_checkpoint(self.args.output_dir, str(resume_from_checkpoint)))
            check_same_config(resume_from_checkpoint, self.run_config, self.args.resume_with_changed_config)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)
        self._rotate_after_confirmation()  # training ended normally: the last checkpoint holds the result
        return output

    def create_optimizer(self, *args: Any, **kwargs: Any):
        """transformers' optimizer without its parameter groups that hold no parameter (with LoRA the
        no-weight-decay group is empty). DeepSpeed's ZeRO optimizer leaves empty groups out, while
        transformers 4.x builds the LR scheduler on the groups as created; the scheduler then steps one
        group more than the optimizer has (torch: `zip() argument 2 is longer than argument 1`)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

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
            write_manifest(checkpoint, self.run_config)
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

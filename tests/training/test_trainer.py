"""JointObjTrainer: objectives by name, metrics in the logs, NaN stop, atomic latest checkpoint, resume."""

import math

import pytest
import torch
from transformers import TrainerCallback

from jointobj import Denoiser, LossOutput, Objective
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import load_toyset, toy_tokenizer
from jointobj.training.trainer import LATEST, JointObjConfig, JointObjTrainer, build_objective, latest_checkpoint


def tiny_denoiser(seed: int = 0) -> Denoiser:
    tokenizer = toy_tokenizer()
    model = tiny_masked_lm("modernbert", vocab_size=len(tokenizer), seed=seed)
    return Denoiser(model, tokenizer=tokenizer).add_lora(init_lora_weights="gaussian")  # B != 0: LoRA init matters


def config(tmp_path, **overrides) -> JointObjConfig:
    settings = dict(output_dir=str(tmp_path / "run"), objective="token_ce", max_steps=6, per_device_train_batch_size=8,
                    learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                    disable_tqdm=True)
    settings.update(overrides)
    return JointObjConfig(**settings)


DATA = load_toyset("likes_tennis").dataset(64, seed=0)


def losses(history: list[dict]) -> list[float]:
    return [row["loss"] for row in history if "loss" in row]


def test_unknown_objective_lists_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match="known: .*token_ce"):
        config(tmp_path, objective="contrastive")


def test_cpu_machine_gets_use_cpu(tmp_path):
    assert config(tmp_path).use_cpu == (not torch.cuda.is_available())


def test_objective_is_built_from_its_name_and_kwargs(tmp_path):
    objective = build_objective(config(tmp_path, objective_kwargs={"schedule": "cosine"}))
    assert type(objective.schedule).__name__ == "CosineSchedule"
    from_json = build_objective(config(tmp_path, objective="mixture",  # as the command line passes it
                                       objective_kwargs='{"token_ce_weight": 0.25, "logsum": {"blocks": 2}}'))
    assert (from_json.token_ce_weight, from_json.logsum.blocks) == (0.25, 2)
    assert from_json.logsum.self_condition.seed == 0 == from_json.token_ce.self_condition.seed  # --seed
    seeded = build_objective(config(tmp_path, objective="logsum", seed=7))
    assert seeded.self_condition.seed == 7
    assert build_objective(config(tmp_path, objective="logsum", seed=7, objective_kwargs={"seed": 3})
                           ).self_condition.seed == 3  # kwargs win


@pytest.mark.parametrize("kwargs,message", [
    ({"blockz": 2}, "'mixture' takes no argument 'blockz'; it takes: logsum, seed, token_ce, token_ce_weight"),
    ({"token_ce_weight": 1.5}, r"token_ce_weight \(lambda\) must be a number in \[0, 1\]"),
    ({"logsum": {"blocks": 0}}, "blocks must be a whole number K >= 1 or 'all'"),
    ({"logsum": {"mode": "fast"}}, "mode must be one of exact, sampled"),
    ({"logsum": 3}, "logsum must be a LogSumOrdersLoss, a dict of its keyword arguments, or None"),
    ('{"blocks": 2', "objective_kwargs must be a JSON object"),
    ("[2]", "objective_kwargs must be a mapping"),
])
def test_bad_objective_kwargs_fail_when_the_config_is_built(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, objective="mixture", objective_kwargs=kwargs)


def test_objective_metrics_reach_the_logs(tmp_path):
    trainer = JointObjTrainer(tiny_denoiser(), config(tmp_path, max_steps=2), train_dataset=DATA)
    trainer.train()
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 2 and all("masked_nll" in row and "masked_fraction" in row for row in logged)


class SometimesReports(Objective):
    """Token CE plus metric `every` = 1 on every call and `odd` = the call number on odd calls only."""

    def __init__(self, objective):
        super().__init__()
        self.objective, self.calls = objective, 0

    def forward(self, denoiser, batch):
        output = self.objective(denoiser, batch)
        self.calls += 1
        metrics = {"every": torch.tensor(1.0)} | ({"odd": torch.tensor(float(self.calls))} if self.calls % 2 else {})
        return LossOutput(output.loss, metrics)


def test_a_metric_absent_on_some_steps_is_averaged_over_the_steps_that_report_it(tmp_path):
    # Logged every 4 steps: `odd` comes from calls 1 and 3 (mean 2), 5 and 7 (mean 6). Averaged over
    # all 4 steps it would read 1 and 3 (how an order family absent from a batch diluted its log-likelihood).
    settings = config(tmp_path, max_steps=8, logging_steps=4)
    objective = SometimesReports(build_objective(settings))
    trainer = JointObjTrainer(tiny_denoiser(), settings, objective=objective, train_dataset=DATA)
    trainer.train()
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert [row["odd"] for row in logged] == [2.0, 6.0] and [row["every"] for row in logged] == [1.0, 1.0]


class NaNAtStep(Objective):
    """Wraps an objective; returns NaN from the given step on (as an exploding run would)."""

    def __init__(self, objective, trainer_state, step):
        super().__init__()
        self.objective, self.state, self.step = objective, trainer_state, step

    def forward(self, denoiser, batch):
        output = self.objective(denoiser, batch)
        if self.state().global_step >= self.step:
            from jointobj.objectives.base import check_finite

            check_finite(output.loss * math.nan, "token_ce loss", batch["input_ids"])
        return output


def test_nan_loss_stops_with_the_step_and_batch_and_keeps_the_checkpoint(tmp_path):
    settings = config(tmp_path, save_strategy="steps", save_steps=2)
    trainer = JointObjTrainer(tiny_denoiser(), settings, train_dataset=DATA)
    trainer.objective = NaNAtStep(build_objective(settings), lambda: trainer.state, step=3)
    with pytest.raises(FloatingPointError, match=r"stopped at step 3: token_ce loss is not finite .* first row is \["):
        trainer.train()
    assert latest_checkpoint(settings.output_dir).endswith("checkpoint-2")


class NaNAtCall(Objective):
    """Wraps an objective; its `call`-th forward (counting from 1) gives a NaN loss."""

    def __init__(self, objective, call):
        super().__init__()
        self.objective, self.call, self.calls = objective, call, 0

    def forward(self, denoiser, batch):
        self.calls += 1
        output = self.objective(denoiser, batch)
        if self.calls == self.call:
            from jointobj.objectives.base import check_finite

            check_finite(output.loss * math.nan, "token_ce loss", batch["input_ids"])
        return output


def test_a_nan_micro_batch_after_a_finite_one_keeps_the_confirmed_checkpoint(tmp_path):
    # Two micro-batches a step: step 5's first (finite) confirms checkpoint-4 and rotates checkpoint-2 away
    # (limit 1); its second is NaN. checkpoint-4 is then the only complete one and must stay resumable.
    settings = config(tmp_path, save_strategy="steps", save_steps=2, save_total_limit=1,
                      gradient_accumulation_steps=2, per_device_train_batch_size=4)
    trainer = JointObjTrainer(tiny_denoiser(), settings, train_dataset=DATA)
    trainer.objective = NaNAtCall(build_objective(settings), call=10)
    with pytest.raises(FloatingPointError, match="checkpoint-4"):
        trainer.train()
    assert latest_checkpoint(settings.output_dir).endswith("checkpoint-4")


def test_latest_names_only_complete_checkpoints(tmp_path):
    settings = config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    JointObjTrainer(tiny_denoiser(), settings, train_dataset=DATA).train()
    assert latest_checkpoint(settings.output_dir).endswith("checkpoint-4")
    # A crash while writing checkpoint-6 leaves a partial directory with a higher number: not the latest.
    (tmp_path / "run" / "checkpoint-6").mkdir()
    assert latest_checkpoint(settings.output_dir).endswith("checkpoint-4")
    assert (tmp_path / "run" / LATEST).read_text().strip() == "checkpoint-4"


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step
        return control


def test_resumed_run_repeats_the_uninterrupted_losses(tmp_path):
    straight = JointObjTrainer(tiny_denoiser(), config(tmp_path / "a"), train_dataset=DATA)
    straight.train()

    first = config(tmp_path / "b", save_strategy="steps", save_steps=3)
    JointObjTrainer(tiny_denoiser(), first, train_dataset=DATA, callbacks=[StopAt(3)]).train()
    fresh = tiny_denoiser()
    with torch.no_grad():  # a different adapter: only loading the checkpoint can make the losses match again
        for name, parameter in fresh.named_parameters():
            if "lora_" in name:
                parameter.add_(0.5 * torch.randn_like(parameter))
    resumed = JointObjTrainer(fresh, config(tmp_path / "b"), train_dataset=DATA)
    resumed.train(resume_from_checkpoint=latest_checkpoint(first.output_dir))

    expected = losses(straight.state.log_history)
    assert len(expected) == 6
    history = losses(resumed.state.log_history)  # steps 1..3 restored from the checkpoint, then 4..6 run here
    assert history == pytest.approx(expected, rel=1e-5)


def test_loss_output_is_returned_when_asked(tmp_path):
    trainer = JointObjTrainer(tiny_denoiser(), config(tmp_path), train_dataset=DATA)
    batch = trainer.data_collator([DATA[i] for i in range(4)])
    loss, output = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert isinstance(output, LossOutput) and loss is output.loss


def test_evaluate_reports_the_objective_and_leaves_the_model_alone(tmp_path):
    # Fails without the prediction_step override (the Trainer's own gathers logits / labels a dLLM objective
    # does not have), if the objective's metrics are not logged as eval_*, or if evaluate steps the optimizer.
    denoiser = tiny_denoiser()
    trainer = JointObjTrainer(denoiser, config(tmp_path, max_steps=1, per_device_eval_batch_size=8), train_dataset=DATA,
                              eval_dataset=DATA.select(range(16)))
    trainer.train()
    before = {name: value.clone() for name, value in denoiser.state_dict().items()}
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    assert {"eval_masked_nll", "eval_masked_fraction"} <= set(metrics)
    assert all(torch.equal(before[name], value) for name, value in denoiser.state_dict().items())


def test_every_checkpoint_reloads_with_its_mask_id(tiny_model_dir, tmp_path):
    # Fails if checkpoint-N holds no jointobj.json: the reload then takes the base tokenizer's mask id, not 5.
    denoiser = Denoiser.from_pretrained(tiny_model_dir).add_lora(init_lora_weights="gaussian")
    assert denoiser.mask_token_id != 5
    denoiser.mask_token_id = 5
    settings = config(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    JointObjTrainer(denoiser, settings, train_dataset=DATA).train()
    for step in (1, 2):
        checkpoint = tmp_path / "run" / f"checkpoint-{step}"
        assert (checkpoint / "jointobj.json").exists()
        assert Denoiser.from_pretrained(checkpoint).mask_token_id == 5

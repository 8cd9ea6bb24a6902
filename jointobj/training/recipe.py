"""The flow every recipe in recipes/ runs: arguments, model, data, train, save, report.

    deepspeed recipes/logsum.py                           # embedded default: nothing to download
    deepspeed recipes/logsum.py --config recipes/configs/logsum.yaml --model_name_or_path DIR ...

Arguments come from the recipe's YAML (`--config FILE` or `--config=FILE`; a `null` value keeps
the field's default), with command-line flags on top. Without
`--model_name_or_path` the recipe runs the embedded default: a tiny bidirectional transformer,
pretrained with the per-token loss on the toy suite (or reused from `base_dir`), stands in for
an existing dLLM; it is fine-tuned with LoRA, the adapter saved in PEFT format, and base and
fine-tuned models compared by the joint-validity evaluator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import PartialState
from transformers import HfArgumentParser, enable_full_determinism, set_seed

from jointobj.decoding.budget import parse_tokens_per_step
from jointobj.decoding.registry import DECODERS
from jointobj.evaluation.run_report import BASELINE_LABEL, report_run
from jointobj.model.denoiser import Denoiser
from jointobj.training.checkpoints import file_sha256
from jointobj.training.data import load_training_data
from jointobj.training.embedded import ensure_base
from jointobj.training.moved_options import MOVED_OPTIONS, moved_option_error
from jointobj.training.run_dir import (
    check_previous_run,
    clear_previous_run,
    finished_step,
    mark_failed,
    mark_finished,
    previous_run,
    run_lock,
    write_run_record,
)
from jointobj.training.trainer import JointObjConfig, JointObjTrainer, build_objective, parse_objective_kwargs
from jointobj.utils.errors import UserError, run_command, user_errors
from jointobj.utils.ranks import configure_cpu_ranks, launcher_rank
from jointobj.utils.registry import split_names

MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
BASELINE_DIR = "token_ce"  # OUTPUT_DIR/token_ce: the TokenCE-continued model (--token_ce_step_ratio)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local model directory (a *ForMaskedLM, or LLaDA / Dream with --trust_remote_code). "
                          "Empty: the embedded tiny base from base_dir, pretrained there first if missing."},
    )
    trust_remote_code: bool = field(default=False,
                                    metadata={"help": "Run modeling code shipped in the model directory."})
    compat: bool = field(
        default=True,
        metadata={"help": "Load remote code written for transformers 4.x (LLaDA's, Dream's) on 5.x through "
                          "jointobj's compatibility rules (jointobj/model/compat.py; the rules applied are listed in "
                          "jointobj.json). --no_compat turns them off."},
    )
    model_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype the weights are loaded in: float32, bfloat16, float16, or auto (the checkpoint's). "
                          "Default: with DeepSpeed, its precision (bfloat16 with --bf16, float16 with --fp16, else "
                          "float32; DeepSpeed keeps float32 master weights itself); without DeepSpeed, float32, "
                          "except a frozen LoRA base under --bf16 (bfloat16). Weights the optimizer updates directly "
                          "(--lora_r 0 without DeepSpeed) must stay float32: --bf16 then autocasts around them."},
    )
    mask_token_id: int | None = field(default=None,
                                      metadata={"help": "Override the mask id (else tokenizer, then config)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank; 0 trains all parameters instead."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "Comma-separated module names, or 'all-linear'; default: per architecture."}
    )
    base_dir: str = field(default="runs/base", metadata={"help": "Embedded default: where the tiny base dLLM lives."})
    base_steps: int = field(default=1200,
                            metadata={"help": "Embedded default: per-token pretraining steps of the base."})
    base_learning_rate: float = field(default=3e-3,
                                      metadata={"help": "Embedded default: base pretraining learning rate."})
    token_ce_step_ratio: float = field(
        default=0.0,
        metadata={"help": "TokenCE continued, the baseline at equal compute: after the fine-tune, a second fine-tune "
                          "of the same base (same LoRA, data, batch, learning rate, schedule, seed) with objective "
                          "token_ce for round(token_ce_step_ratio x max_steps) steps, saved in OUTPUT_DIR/token_ce "
                          "and reported as `TokenCE` beside the fine-tuned model, with both runs' steps and seconds. "
                          "Set it to a fine-tune step's cost in TokenCE steps, measured side by side, so both take "
                          "about the same wall-clock while reruns stay identical (a step count, not a timer). "
                          "0: none."},
    )

    def __post_init__(self) -> None:
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning), got {self.lora_r}")
        if not self.token_ce_step_ratio >= 0:
            raise ValueError(f"token_ce_step_ratio must be >= 0 (0: no TokenCE baseline), "
                             f"got {self.token_ce_step_ratio}")
        if self.model_dtype is not None and self.model_dtype not in MODEL_DTYPES:
            raise ValueError(f"model_dtype must be one of {', '.join(MODEL_DTYPES)} (or unset), "
                             f"got {self.model_dtype!r}")


@dataclass
class DataArguments:
    dataset: str = field(
        default="likes_tennis,cities,agreement",
        metadata={"help": "Toy set names or user sets by import reference module:attribute (comma-separated), "
                          "or a local .jsonl / .json file or datasets directory."},
    )
    samples_per_toyset: int = field(default=2000, metadata={"help": "Examples drawn from each toy set."})
    report_decoders: str = field(default="confidence,l2r,random", metadata={"help": "Decoders in the final report."})
    report_tokens_per_step: str = field(default="1,2,all", metadata={"help": "Tokens per step in the final report."})
    report_samples: int = field(default=400, metadata={"help": "Samples per report cell (0: no report)."})
    allow_mask_token_in_data: bool = field(
        default=False, metadata={"help": "Accept the [MASK] id inside training rows (refused by default: it is "
                                         "the corruption token, so data holding it is almost always a bug)."},
    )

    def __post_init__(self) -> None:
        """Refuse bad report options now, not after training and saving."""
        if self.report_samples < 0:
            raise ValueError(f"report_samples must be >= 0 (0: no report), got {self.report_samples}")
        for name in self.report_decoders.split(","):
            DECODERS.get(name.strip())  # an unknown decoder fails here, listing the known ones
        for value in self.report_tokens_per_step.split(","):
            try:
                parse_tokens_per_step(value.strip())
            except ValueError as error:
                raise ValueError(f"--report_tokens_per_step {self.report_tokens_per_step}: {error}") from error


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the path given by `--config PATH` or `--config=PATH`, the other arguments)."""
    config_path, rest = None, []
    at = 0
    while at < len(argv):
        arg = argv[at]
        if arg == "--config":
            if at + 1 >= len(argv):
                raise ValueError("--config needs a YAML file path")
            config_path, at = argv[at + 1], at + 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
            if not config_path:
                raise ValueError("--config= needs a YAML file path")
        else:
            rest.append(arg)
        at += 1
    return config_path, rest


def _yaml_flag_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):  # e.g. gradient_checkpointing_kwargs: TrainingArguments parses JSON
        return json.dumps(value)
    return str(value)


CONFIG_USAGE = ("%(prog)s [--config FILE.yaml] [--FLAG VALUE ...]\n\n"
                "  --config FILE.yaml    a YAML mapping of the flags below (each recipe has a default in "
                "recipes/configs/;\n                        a null value keeps the default); flags given on the "
                "command line win")


def check_moved_flags(argv: list[str]) -> None:
    """Fail on a flag that moved into --objective_kwargs (e.g. --blocks 4), saying where it goes now."""
    for at, arg in enumerate(argv):
        name, _, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if name in MOVED_OPTIONS:
            if not value and at + 1 < len(argv) and not argv[at + 1].startswith("--"):
                value = argv[at + 1]
            raise moved_option_error(name, value or None)


# transformers 5 renamed these TrainingArguments (the old names warn); 4.x knows only the old ones.
RENAMED_TRAINING_ARGS = {"gradient_checkpointing": "activation_checkpointing",
                         "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def installed_name(name: str, known: set[str]) -> str:
    """The name this transformers knows for a TrainingArguments field given under its old or new name
    (activation_checkpointing on 5.x, gradient_checkpointing on 4.x), so one YAML runs on both, quietly."""
    key = name.replace("-", "_")
    renamed = {**RENAMED_TRAINING_ARGS, **{new: old for old, new in RENAMED_TRAINING_ARGS.items()}}
    other = renamed.get(key)
    if other is None:
        return name
    new = key if key in RENAMED_TRAINING_ARGS.values() else other
    old = other if new == key else key
    return new if new in known else old


def _flag_names(argv: list[str], known: set[str]) -> list[str]:
    """`argv` with renamed TrainingArguments flags (`--gradient_checkpointing[=V]`) under the installed name."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, equals, value = arg[2:].partition("=")
            arg = f"--{installed_name(name, known)}{equals}{value}"
        out.append(arg)
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, where PyYAML keeps the last silently
    (a second `token_ce:` under objective_kwargs would quietly replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark)
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep)


def parse_recipe_args(argv: list[str] | None, default_config: str | Path | None):
    """(ModelArguments, DataArguments, JointObjConfig) from `--config YAML` then flags (flags win).

    The YAML's values become the parser's defaults, checked and converted as the same flags would
    be, so `--help` shows the values the run will use. A YAML `null` keeps the field's default (it
    is not passed on as the string "None")."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given, argv = _split_config_flag(argv)
    config_path = given if given is not None else default_config
    parser = RecipeArgumentParser((ModelArguments, DataArguments, JointObjConfig), usage=CONFIG_USAGE)
    known = {action.dest for action in parser._actions}
    argv = _flag_names(argv, known)
    if config_path is not None:
        path = Path(config_path)
        if not path.exists():
            raise UserError(f"config {path} does not exist")
        try:
            values = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"config {path} is not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of argument names to values")
        from_yaml: list[str] = []
        for key, value in values.items():
            if key in MOVED_OPTIONS:
                raise moved_option_error(key, value)
            if value is not None:
                from_yaml += [f"--{installed_name(key, known)}", _yaml_flag_value(value)]
        from_yaml = fractional_warmup(from_yaml)
        parsed, unknown = parser.parse_known_args(from_yaml)
        if unknown:
            raise ValueError(f"config {path}: unknown keys {' '.join(a for a in unknown if a.startswith('--'))}; "
                             "see --help for the known ones")
        yaml_keys = [flag[2:].replace("-", "_") for flag in from_yaml[::2]]  # [--name, value] pairs
        parser.set_defaults(**{key: getattr(parsed, key) for key in yaml_keys})
        parser.description = f"Defaults shown are {path}'s values where it sets them."
        warn_train_for_of_other_sets(path, values, argv)
    check_moved_flags(argv)
    with user_errors():  # a value the dataclasses (or TrainingArguments) refuse is the user's to fix
        return parser.parse_args_into_dataclasses(args=fractional_warmup(argv), look_for_args_file=False)


def warn_train_for_of_other_sets(path: Path, values: dict, argv: list[str]) -> None:
    """A config's `train_for` was chosen for the config's own `dataset` (the main job's: a planned order of
    latin_square_3's cells); a run that brings its own `--dataset` but not its own `--train_for` would train
    that decoder on sets it was not chosen for, silently. Say so, and how to choose."""
    flags = {arg[2:].partition("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    if values.get("train_for") and "dataset" in flags and "train_for" not in flags:
        spec = values["train_for"]
        spec = ", ".join(map(str, spec)) if isinstance(spec, list) else spec
        warnings.warn(f"{path} trains for {spec}, chosen for its own sets ({values.get('dataset')}), "
                      "and --dataset replaces them: pass --train_for with the decoder and budget you will run on "
                      "yours (e.g. confidence:tokens_per_step=2), or --train_for '' for the log-sum over orders",
                      UserWarning, stacklevel=3)


def fractional_warmup(args: list[str]) -> list[str]:
    """`--warmup_steps 0.03` (a fraction of the run, as transformers 5 reads a value below 1) as
    `--warmup_ratio 0.03` on transformers 4.x, whose warmup_steps takes whole steps only and whose
    warmup_ratio (gone in 5) is that fraction. Unchanged where warmup_steps takes a float."""
    fields = {field.name: field for field in dataclasses.fields(JointObjConfig)}
    if "warmup_ratio" not in fields or fields["warmup_steps"].type not in (int, "int"):
        return args
    rewritten = list(args)
    for at, arg in enumerate(rewritten):
        name, equals, value = arg.partition("=")
        if not name.startswith("--") or name[2:].replace("-", "_") != "warmup_steps":
            continue
        if not equals and at + 1 < len(rewritten):
            value = rewritten[at + 1]
        try:
            fraction = float(value)
        except ValueError:
            continue
        if 0 < fraction < 1:
            if equals:
                rewritten[at] = f"--warmup_ratio={value}"
            else:
                rewritten[at] = "--warmup_ratio"
    return rewritten


class RecipeArgumentParser(HfArgumentParser):
    """HfArgumentParser whose command-line errors raise a UserError (one line on rank 0) instead of
    printing the usage and exiting on every rank."""

    def error(self, message: str):
        raise UserError(f"{message} (`--help` lists the flags)")


def join_process_group(config: JointObjConfig) -> None:
    """Start the process group before any model is built.

    Under ZeRO-3, from_pretrained builds the model inside deepspeed.zero.Init, which reads the
    world size from deepspeed.comm; with use_cpu, accelerate starts plain torch.distributed, so
    deepspeed.comm must be pointed at that group or it reports one rank.
    """
    _ = config.device  # accelerate initialises torch.distributed here
    if config.deepspeed and torch.distributed.is_available() and torch.distributed.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


def model_dtype(model_args: ModelArguments, config: JointObjConfig) -> torch.dtype | str:
    """The dtype to load the weights in (see ModelArguments.model_dtype): always explicit, since
    transformers' own default changed in 5.0 from float32 to the checkpoint's dtype."""
    if model_args.model_dtype is not None:
        return "auto" if model_args.model_dtype == "auto" else getattr(torch, model_args.model_dtype)
    if config.deepspeed:  # DeepSpeed holds float32 master weights and runs the model in its precision
        return torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else torch.float32
    if model_args.lora_r > 0 and config.bf16:  # frozen base; peft keeps the adapter in float32
        return torch.bfloat16
    return torch.float32  # AdamW updates these weights in place: float32, with --bf16 / --fp16 autocast on top


def load_denoiser(model_args: ModelArguments, path: str | Path, config: JointObjConfig) -> Denoiser:
    """The model to fine-tune, with a LoRA adapter unless lora_r is 0. The path is made absolute, so
    the adapter records a base that loads from any working directory."""
    denoiser = Denoiser.from_pretrained(Path(path).resolve(), trust_remote_code=model_args.trust_remote_code,
                                        compat=model_args.compat,
                                        mask_token_id=model_args.mask_token_id, dtype=model_dtype(model_args, config))
    if model_args.lora_r > 0:
        targets = model_args.lora_target_modules
        overrides: dict[str, Any] = {"r": model_args.lora_r, "lora_alpha": model_args.lora_alpha,
                                     "lora_dropout": model_args.lora_dropout}
        if targets:
            overrides["target_modules"] = targets if targets == "all-linear" else targets.split(",")
        denoiser.add_lora(**overrides)
    return denoiser


def check_output_dir(output_dir: str | Path, model_dir: str | Path) -> None:
    """Refuse an output_dir that is the model's own directory or inside it: saving there would
    overwrite the base in place (--lora_r 0) or mix the run's files into it."""
    out, model = Path(output_dir).resolve(), Path(model_dir).resolve()
    if out == model or model in out.parents:
        where = "is" if out == model else "is inside"
        raise ValueError(
            f"output_dir {output_dir} {where} the model directory {model_dir}; the run would write over the model "
            "it starts from. Pass another --output_dir (e.g. runs/<run name>)."
        )


@dataclass
class RecipeResult:
    trainer: JointObjTrainer | None  # None when the run had already finished (nothing was done)
    denoiser: Denoiser | None
    output_dir: str
    base: str
    report: list[dict]


def resume_target(config: JointObjConfig) -> str | None:
    """What to resume from: None for a fresh start (also for "latest" over an output_dir holding no
    run: nothing can be lost), else "latest" or the path given; JointObjTrainer.train verifies it."""
    resume = config.resume_from_checkpoint
    if resume == "latest" and not previous_run(config.output_dir):
        print(f"--resume_from_checkpoint latest: {config.output_dir} holds no run yet; starting at step 0", flush=True)
        return None
    return resume


def seed_everything(config: JointObjConfig) -> None:
    """Seed python, numpy and torch from --seed before anything random is built (LoRA and energy-head
    init), as the Trainer does only after the model exists."""
    (enable_full_determinism if config.full_determinism else set_seed)(config.seed)


def run_recipe(argv: list[str] | None = None, default_config: str | Path | None = None,
               callbacks: list[Any] | None = None) -> RecipeResult:
    """Parse arguments, hold the output_dir's run lock (global rank 0), then train_and_report.
    `callbacks`: extra transformers TrainerCallbacks (e.g. a wall-clock stop for equal-compute runs)."""
    model_args, data_args, config = parse_recipe_args(argv, default_config)
    with holding_output_dir(model_args, config):
        return train_and_report(model_args, data_args, config, callbacks)


def recipe_main(default_config: str | Path | None = None) -> None:
    """A recipe script's entry point: run_recipe on the command line; a user's mistake ends in one
    `jointobj: error:` line (rank 0) and exit status 2, its traceback in a log file (jointobj.utils.errors)."""
    sys.exit(run_command(lambda argv: run_recipe(argv, default_config), sys.argv[1:]))


@contextlib.contextmanager
def holding_output_dir(model_args: ModelArguments, config: JointObjConfig):
    """The run's exclusive lock on --output_dir (jointobj.training.run_dir.run_lock), held by global rank 0
    for the run's life; checked against the model directory first (the lock file must not land in it)."""
    base = model_args.base_dir if model_args.model_name_or_path is None else model_args.model_name_or_path
    check_output_dir(config.output_dir, base)
    if launcher_rank() != 0:
        yield
        return
    with run_lock(config.output_dir):
        yield


def config_fingerprint(model_args: ModelArguments, data_args: DataArguments, config: JointObjConfig,
                       base: str | Path) -> dict:
    """What a resume must not change, recorded with every checkpoint: the objective, the data and the base model."""
    data = Path(data_args.dataset)
    return {"objective": config.objective, "objective_kwargs": parse_objective_kwargs(config.objective_kwargs),
            "dataset": data_args.dataset, "dataset_sha256": file_sha256(data) if data.is_file() else None,
            "samples_per_toyset": data_args.samples_per_toyset, "base_model": str(Path(base).resolve()),
            "lora_r": model_args.lora_r, "lora_alpha": model_args.lora_alpha,
            "lora_target_modules": model_args.lora_target_modules}


def run_record(model_args: ModelArguments, data_args: DataArguments, config: JointObjConfig,
               base: str | Path) -> dict:
    """What `jointobj report RUN_DIR` needs to redo the report (jointobj/cli/report.py), written beside the model."""
    return {"base": str(Path(base).resolve()), "embedded": model_args.model_name_or_path is None,
            "dataset": data_args.dataset, "toysets": split_names(data_args.dataset),
            "report_decoders": split_names(data_args.report_decoders),
            "report_tokens_per_step": split_names(data_args.report_tokens_per_step),
            "report_samples": data_args.report_samples, "seed": config.seed, "train_for": config.train_for,
            # how the recipe loaded the base, so a remote-code (LLaDA / Dream) run's report loads it the same way
            "load": {"trust_remote_code": model_args.trust_remote_code, "mask_token_id": model_args.mask_token_id,
                     "compat": model_args.compat}}


def write_report(output_dir: str | Path, record: dict, step: int, samples: int | None = None) -> list[dict]:
    """The run's report from its record (report_run); a failure is recorded (failed.json: the step, the error,
    `jointobj report` to redo it) and raised, and the run is marked finished only once the report is written."""
    try:
        rows = report_run(record["base"], Path(output_dir), record["toysets"], decoders=record["report_decoders"],
                          tokens_per_step=record["report_tokens_per_step"],
                          samples=record["report_samples"] if samples is None else samples, seed=record["seed"],
                          output_dir=output_dir, train_for=record.get("train_for"), load=record.get("load"),
                          trained=record.get("trained"))
    except Exception as error:
        redo = f"fix it and write the report with `jointobj report {output_dir}`"
        mark_failed(output_dir, "report", error, step, redo)
        print(f"{output_dir}: training finished and the model is saved (step {step}), but the report failed; {redo}",
              file=sys.stderr, flush=True)
        raise
    mark_finished(output_dir, step)
    return rows


def train_and_report(model_args: ModelArguments, data_args: DataArguments, config: JointObjConfig,
                     callbacks: list[Any] | None = None) -> RecipeResult:
    """(Pre)train the base if embedded, fine-tune, save the adapter, report; the run is finished only then."""
    embedded = model_args.model_name_or_path is None
    base = Path(model_args.base_dir if embedded else model_args.model_name_or_path)
    check_output_dir(config.output_dir, base)
    check_previous_run(config.output_dir, config.resume_from_checkpoint, config.overwrite_output_dir)
    done = finished_step(config.output_dir)
    if config.resume_from_checkpoint == "latest" and done is not None and done >= config.max_steps:
        print(f"{config.output_dir} holds a run that finished at step {done}; nothing to resume and nothing changed "
              "(raise --max_steps to train it further, or start over with --overwrite_output_dir)", flush=True)
        return RecipeResult(None, None, config.output_dir, str(base), [])
    configure_cpu_ranks()
    join_process_group(config)
    state = PartialState()
    if config.overwrite_output_dir and not config.resume_from_checkpoint and state.is_main_process:
        cleared = clear_previous_run(config.output_dir)
        if cleared:
            print(f"--overwrite_output_dir: deleted the previous run's {', '.join(cleared)} in {config.output_dir}")
    state.wait_for_everyone()
    if embedded:
        base = ensure_base(model_args.base_dir, data_args.dataset, steps=model_args.base_steps,
                           learning_rate=model_args.base_learning_rate,
                           samples_per_toyset=data_args.samples_per_toyset, seed=config.seed)
    trainer, denoiser, train_output = fine_tune(model_args, data_args, config, base, callbacks,
                                                resume_target(config))
    trainer.save_model(config.output_dir)  # the adapter only (PEFT format) when LoRA is on, and jointobj.json
    timing = {"fine-tuned": {"steps": trainer.state.global_step, "seconds": train_output.metrics["train_runtime"]}}
    if baseline_steps(model_args, config) > 0:
        timing[BASELINE_LABEL] = train_baseline(model_args, data_args, config, base)
    rows: list[dict] = []
    if trainer.is_world_process_zero():
        record = {**run_record(model_args, data_args, config, base), "trained": timing}  # steps, seconds per model
        write_run_record(config.output_dir, record)
        if embedded and data_args.report_samples > 0:
            print(f"\n{numerics()}", flush=True)
            rows = write_report(config.output_dir, record, trainer.state.global_step)
        else:
            mark_finished(config.output_dir, trainer.state.global_step)
    trainer.accelerator.wait_for_everyone()
    return RecipeResult(trainer, denoiser, config.output_dir, str(base), rows)


def fine_tune(model_args: ModelArguments, data_args: DataArguments, config: JointObjConfig, base: str | Path,
              callbacks: list[Any] | None = None, resume: str | None = None):
    """Fine-tune `base` with `config`'s objective (LoRA unless lora_r is 0): (trainer, denoiser, its TrainOutput)."""
    seed_everything(config)
    denoiser = load_denoiser(model_args, base, config)
    objective = build_objective(config)
    data = load_training_data(data_args.dataset, denoiser.tokenizer, data_args.samples_per_toyset, seed=config.seed,
                              max_length=denoiser.max_positions, vocab_size=denoiser.vocab_size,
                              mask_token_id=None if data_args.allow_mask_token_in_data else denoiser.mask_token_id,
                              min_response_tokens=objective.min_scorable_tokens)  # bad rows fail now, not mid-run
    trainer = JointObjTrainer(denoiser, config, objective, train_dataset=data, processing_class=denoiser.tokenizer,
                              callbacks=callbacks)
    trainer.run_config = config_fingerprint(model_args, data_args, config, base)
    settle_gradient_checkpointing(trainer, denoiser)
    configure_cpu_ranks()  # again: a second Trainer's setup (TokenCE continued) resets torch to every core
    return trainer, denoiser, trainer.train(resume_from_checkpoint=resume)


def baseline_config(config: JointObjConfig, steps: int) -> JointObjConfig:
    """The TokenCE-continued run's config: the fine-tune's (LoRA, data, batch, learning rate, schedule, seed) with
    objective token_ce for `steps` steps, into OUTPUT_DIR/token_ce, without checkpoints."""
    return dataclasses.replace(config, objective="token_ce", objective_kwargs=None, train_for=None, max_steps=steps,
                               output_dir=str(Path(config.output_dir) / BASELINE_DIR), save_strategy="no",
                               resume_from_checkpoint=None, overwrite_output_dir=True,
                               logging_steps=max(1, steps // 4))


def baseline_steps(model_args: ModelArguments, config: JointObjConfig) -> int:
    """TokenCE continued's steps: round(token_ce_step_ratio x max_steps); 0: no baseline."""
    return round(model_args.token_ce_step_ratio * config.max_steps) if config.max_steps > 0 else 0


def train_baseline(model_args: ModelArguments, data_args: DataArguments, config: JointObjConfig,
                   base: str | Path) -> dict:
    """TokenCE continued (--token_ce_step_ratio): the same base fine-tuned by the same Trainer with the per-token CE
    only, saved in OUTPUT_DIR/token_ce; its steps and seconds, for the report to print beside the fine-tune's."""
    steps = baseline_steps(model_args, config)
    if PartialState().is_main_process:
        print(f"\nTokenCE continued: the same base, objective token_ce, {steps} steps "
              f"({model_args.token_ce_step_ratio:g} x {config.max_steps}, --token_ce_step_ratio)", flush=True)
    trainer, _, output = fine_tune(model_args, data_args, baseline_config(config, steps), base)
    trainer.save_model(trainer.args.output_dir)
    return {"steps": trainer.state.global_step, "seconds": output.metrics["train_runtime"], "dir": BASELINE_DIR}


def settle_gradient_checkpointing(trainer: JointObjTrainer, denoiser: Denoiser) -> bool:
    """--gradient_checkpointing: the model's own where it has one; else (LLaDA's code has none) say so once,
    turn it off and checkpoint jointobj's block forwards (the log-sum likelihood's chunks) instead.
    Returns whether the model's own is used."""
    names = [name for name in ("gradient_checkpointing", "activation_checkpointing") if hasattr(trainer.args, name)]
    if not any(getattr(trainer.args, name) for name in names):  # transformers 5 renamed it activation_checkpointing
        return False
    if denoiser.supports_gradient_checkpointing:
        for name in ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"):
            if hasattr(trainer.args, name) and getattr(trainer.args, name) is None:
                # Non-reentrant, 5.x's default: 4.x's reentrant default gives a LoRA model (frozen embeddings,
                # so checkpointed inputs that need no grad) a loss with no grad_fn.
                setattr(trainer.args, name, {"use_reentrant": False})
        return True
    for name in names:
        setattr(trainer.args, name, False)
    has_blocks = trainer.objective.checkpoint_block_forwards()
    fallback = ("checkpointing the objective's block forwards (the log-sum likelihood's chunks) instead"
                if has_blocks else
                f"the {trainer.args.objective} objective has no block forwards to checkpoint, so none is used")
    if trainer.is_world_process_zero():
        print(f"--gradient_checkpointing: {type(denoiser.base_model_for_checkpointing).__name__} does not support "
              f"gradient checkpointing; {fallback}", flush=True)
    return False


def numerics() -> str:
    """What the run's figures depend on beside --seed and the code: one seed gives the same figures
    with the same torch, threads and CPU kernels (README: "Numbers that hold")."""
    return (f"numerics: torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
            f"{torch.backends.cpu.get_cpu_capability()} kernels; the same seed repeats these figures bit for bit "
            "only with all three the same")

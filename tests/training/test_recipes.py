"""The recipes' main() in-process with tiny overrides, and the bad input a recipe must refuse clearly."""

import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from jointobj import Denoiser

from helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))


def load_recipe(name: str):
    return load_script(f"recipes/{name}.py")


@pytest.fixture
def base_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


def tiny_overrides(output_dir: Path) -> list[str]:
    return ["--output_dir", str(output_dir), "--deepspeed", "", "--max_steps", "2", "--per_device_train_batch_size",
            "4", "--samples_per_toyset", "16", "--logging_steps", "1", "--save_strategy", "no",
            "--disable_tqdm", "true"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_main_runs_in_process(recipe, base_dir, tmp_path):
    result = load_recipe(recipe).main(
        ["--model_name_or_path", str(base_dir), "--dataset", "likes_tennis,cities"] + tiny_overrides(tmp_path / "out")
    )
    losses = [row["loss"] for row in result.trainer.state.log_history if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    reloaded = Denoiser.from_pretrained(tmp_path / "out").eval()
    mask = reloaded.mask_token_id
    ids = torch.tensor([[reloaded.tokenizer.convert_tokens_to_ids("<cities>"), mask, mask]])
    result.denoiser.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids), result.denoiser(input_ids=ids))


@pytest.mark.slow  # pretrains a base, trains, reports
def test_embedded_default_pretrains_a_base_then_reports(tmp_path, capsys):
    result = load_recipe("logsum").main(
        ["--base_dir", str(tmp_path / "base"), "--base_steps", "5", "--dataset", "likes_tennis",
         "--report_samples", "8", "--report_decoders", "confidence", "--report_tokens_per_step", "1,all"]
        + tiny_overrides(tmp_path / "out")
    )
    assert (tmp_path / "base" / "jointobj.json").exists() and not (tmp_path / "base.staging").exists()
    assert {row["model"] for row in result.report} == {"base", "TokenCE", "fine-tuned", "oracle"}  # and its baseline
    assert (tmp_path / "out" / "report.json").exists() and (tmp_path / "out" / "report.png").exists()
    assert "fine-tuned valid 95%" in capsys.readouterr().out  # the Wilson interval beside the validity


def test_missing_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recipe("logsum").main(["--model_name_or_path", str(tmp_path / "nowhere")] + tiny_overrides(tmp_path / "o"))


def test_causal_model_directory(tmp_path):
    GPT2LMHeadModel(GPT2Config(vocab_size=70, n_embd=32, n_layer=1, n_head=4)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="causal LM"):
        load_recipe("logsum").main(["--model_name_or_path", str(tmp_path / "gpt2"), "--mask_token_id", "2"]
                                   + tiny_overrides(tmp_path / "o"))


def test_unregistered_objective(base_dir, tmp_path):
    known = "draft_distillation, energy, logsum, mixture, token_ce"
    with pytest.raises(ValueError, match=f"unknown objective 'dpo'; known: {known}"):
        load_recipe("logsum").main(["--model_name_or_path", str(base_dir), "--objective", "dpo"]
                                   + tiny_overrides(tmp_path / "o"))


def test_embedded_base_needs_toy_data(tmp_path):
    (tmp_path / "mine.jsonl").write_text('{"text": "he likes apple"}\n')
    with pytest.raises(ValueError, match="pass --model_name_or_path"):
        load_recipe("logsum").main(["--base_dir", str(tmp_path / "base"), "--dataset", str(tmp_path / "mine.jsonl")]
                                   + tiny_overrides(tmp_path / "o"))


def snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_output_dir_equal_to_or_inside_the_model_dir_is_refused(tmp_path):
    # Fails if check_output_dir lets either through, or (sibling) if it compares paths as strings: "model-run"
    # starts with "model".
    from jointobj.training.recipe import check_output_dir

    (tmp_path / "model").mkdir()
    for output_dir in (tmp_path / "model", tmp_path / "model" / "run", tmp_path / "model" / "a" / ".." / "run"):
        with pytest.raises(ValueError, match="--output_dir"):
            check_output_dir(output_dir, tmp_path / "model")
    check_output_dir(tmp_path / "model-run", tmp_path / "model")
    check_output_dir(tmp_path / "runs" / "model", tmp_path / "model")


def test_recipe_refuses_an_output_dir_inside_the_model_before_training(tiny_model_dir, tmp_path):
    # Fails if run_recipe trains (and saves into DIR/sub, changing DIR) before checking output_dir.
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    before = snapshot(model_dir)
    with pytest.raises(ValueError, match="--output_dir"):
        load_recipe("logsum").main(["--model_name_or_path", str(model_dir), "--lora_r", "0"]
                                   + tiny_overrides(model_dir / "sub"))
    assert snapshot(model_dir) == before and not (model_dir / "sub").exists()


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_flag_with_equals_sign_reads_the_yaml(tmp_path):
    # Fails if only `--config PATH` is recognised: `--config=PATH` then reaches HfArgumentParser, which exits.
    from jointobj.training.recipe import parse_recipe_args

    path = write_yaml(tmp_path / "c.yaml", f"output_dir: {tmp_path / 'out'}\nlora_r: 3\nreport_to: none\n")
    model_args, _, config = parse_recipe_args([f"--config={path}", "--lora_alpha", "7"], None)
    assert (model_args.lora_r, model_args.lora_alpha, config.output_dir) == (3, 7, str(tmp_path / "out"))


def test_yaml_null_keeps_the_default(tmp_path):
    # Fails if null is passed on as the string "None" (mask_token_id: not an int; lora_target_modules: "None").
    from jointobj.training.recipe import parse_recipe_args

    path = write_yaml(tmp_path / "c.yaml", f"output_dir: {tmp_path}\nmask_token_id: null\nlora_target_modules: null\n"
                                           "model_dtype: null\nreport_to: none\n")
    model_args, _, _ = parse_recipe_args(["--config", str(path)], None)
    assert model_args.mask_token_id is None and model_args.lora_target_modules is None
    assert model_args.model_dtype is None


def test_yaml_mapping_reaches_the_training_arguments_as_a_dict(tmp_path):
    # Fails if a YAML mapping is passed on as its Python repr ("{'use_reentrant': False}"), which is not JSON.
    import dataclasses

    from transformers import TrainingArguments

    from jointobj.training.recipe import parse_recipe_args

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    new = "activation_checkpointing_kwargs"
    key = new if new in names else "gradient_checkpointing_kwargs"
    path = write_yaml(tmp_path / "c.yaml",
                      f"output_dir: {tmp_path}\n{key}: {{use_reentrant: false}}\nreport_to: none\n")
    _, _, config = parse_recipe_args(["--config", str(path)], None)
    assert getattr(config, key) == {"use_reentrant": False}


def test_yaml_objective_kwargs_and_a_json_flag_reach_the_objective(tmp_path):
    from jointobj.training.recipe import parse_recipe_args
    from jointobj.training.trainer import build_objective

    path = write_yaml(tmp_path / "c.yaml", f"output_dir: {tmp_path}\nreport_to: none\nobjective: mixture\n"
                                           "objective_kwargs:\n  token_ce_weight: 0.25\n"
                                           "  logsum: {orders: [l2r, r2l], blocks: 2, mode: sampled}\n")
    _, _, config = parse_recipe_args(["--config", str(path)], None)
    objective = build_objective(config)
    assert (objective.token_ce_weight, objective.logsum.blocks, objective.logsum.mode) == (0.25, 2, "sampled")
    assert objective.logsum.proposal.slots == ["l2r", "r2l"]
    _, _, config = parse_recipe_args(["--config", str(path), "--objective", "logsum", "--objective_kwargs",
                                      '{"blocks": 3}'], None)  # the flag replaces the YAML's kwargs whole
    assert build_objective(config).blocks == 3


@pytest.mark.parametrize("old,value,new", [
    ("blocks", "4", """--objective logsum --objective_kwargs '{"blocks": 4}'; or --objective mixture """
                    """--objective_kwargs '{"logsum": {"blocks": 4}}'"""),
    ("token_ce_weight", "0.3", """--objective mixture --objective_kwargs '{"token_ce_weight": 0.3}'"""),
    ("energy_token_ce_weight", "1", """--objective energy --objective_kwargs '{"added_token_ce_weight": 1}'"""),
    ("orders", "l2r,r2l", """'{"orders": ["l2r", "r2l"]}'"""),
])
def test_an_option_that_moved_into_objective_kwargs_names_its_new_place(old, value, new, tmp_path):
    from jointobj.training.recipe import parse_recipe_args

    with pytest.raises(ValueError, match=re.escape(new)):
        parse_recipe_args([f"--{old}", value, "--output_dir", str(tmp_path)], None)
    with pytest.raises(ValueError, match=re.escape(new)):
        parse_recipe_args([f"--{old.replace('_', '-')}={value}", "--output_dir", str(tmp_path)], None)
    path = write_yaml(tmp_path / "c.yaml", f"output_dir: {tmp_path}\n{old}: {value}\n")
    with pytest.raises(ValueError, match=re.escape(new)):
        parse_recipe_args(["--config", str(path)], None)


def test_unknown_model_dtype_is_refused(tmp_path):
    # Fails if ModelArguments accepts any string as model_dtype (the typo would reach getattr(torch, ...) later).
    from jointobj.training.recipe import parse_recipe_args

    with pytest.raises(ValueError, match="model_dtype must be one of auto, float32, bfloat16, float16"):
        parse_recipe_args(["--output_dir", str(tmp_path), "--model_dtype", "int8"], None)


@pytest.mark.parametrize(
    "model_dtype, lora_r, deepspeed, bf16, expected",
    [
        ("float16", 8, False, True, torch.float16),  # explicit wins over the --bf16 default
        ("auto", 0, False, False, "auto"),  # the checkpoint's own dtype, left to transformers
        (None, 0, True, True, torch.bfloat16),  # DeepSpeed: its precision (it keeps float32 master weights)
        (None, 8, True, False, torch.float32),
        (None, 8, False, True, torch.bfloat16),  # frozen LoRA base under --bf16
        (None, 0, False, True, torch.float32),  # weights AdamW updates in place stay float32
        (None, 8, False, False, torch.float32),
    ],
)
def test_model_dtype_default_follows_deepspeed_lora_and_precision(model_dtype, lora_r, deepspeed, bf16, expected,
                                                                  tmp_path):
    # Fails if a row's rule changes, e.g. full fine-tuning loaded in bfloat16 without DeepSpeed.
    from jointobj.training.recipe import ModelArguments
    from jointobj.training.recipe import model_dtype as dtype_for
    from jointobj.training.trainer import JointObjConfig

    config = JointObjConfig(output_dir=str(tmp_path), report_to="none", bf16=bf16,
                            deepspeed=str(ROOT / "ds_configs" / "zero2.json") if deepspeed else None)
    assert dtype_for(ModelArguments(model_dtype=model_dtype, lora_r=lora_r), config) == expected


def test_bad_report_options_fail_before_training(tmp_path):
    # Fails if --report_decoders / --report_tokens_per_step are read only by the report, after training and saving.
    from jointobj.training.recipe import parse_recipe_args

    with pytest.raises(ValueError, match="bogus"):
        parse_recipe_args(["--output_dir", str(tmp_path), "--report_decoders", "confidence,bogus"], None)
    with pytest.raises(ValueError, match=r"--report_tokens_per_step 0,-1: tokens per step must be a whole number >= 1"):
        parse_recipe_args(["--output_dir", str(tmp_path), "--report_tokens_per_step", "0,-1"], None)


def test_broken_yaml_names_the_file(tmp_path):
    # Fails if the YAML parser's error escapes as is: it names "<unicode string>", not the file.
    from jointobj.training.recipe import parse_recipe_args

    path = write_yaml(tmp_path / "broken.yaml", "lora_r: 3\n  lora_alpha: [7\n")
    with pytest.raises(ValueError, match=r"config .*broken.yaml is not valid YAML"):
        parse_recipe_args(["--config", str(path)], None)


@pytest.mark.parametrize("text, line", [
    ("lora_r: 3\nlora_r: 4\n", "lines 1 and 2"),
    ("objective_kwargs:\n  token_ce: {base_kl_weight: 0}\n  token_ce: {base_kl_weight: 30}\n", "lines 2 and 3"),
])
def test_a_key_given_twice_is_refused_not_overwritten(tmp_path, text, line):
    # PyYAML keeps the last of two equal keys silently: an experiment that adds a key the file already has
    # would run the file's value, not its own.
    from jointobj.training.recipe import parse_recipe_args

    path = write_yaml(tmp_path / "twice.yaml", text)
    with pytest.raises(ValueError, match=rf"twice.yaml is not valid YAML.*given twice \({line}\)"):
        parse_recipe_args(["--config", str(path)], None)


@pytest.mark.parametrize("flags, warned", [
    (["--dataset", "shuffle_3"], True),
    (["--dataset", "shuffle_3", "--train_for", "confidence:tokens_per_step=2"], False),
    (["--dataset=shuffle_3", "--train_for="], False),
    ([], False),
])
def test_the_main_jobs_train_for_is_flagged_on_a_dataset_it_was_not_chosen_for(flags, warned, tmp_path):
    import warnings

    from jointobj.training.recipe import parse_recipe_args

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse_recipe_args(["--config", str(ROOT / "recipes/configs/logsum.yaml"), "--output_dir", str(tmp_path),
                           *flags], None)
    said = [str(w.message) for w in caught if "chosen for its own sets" in str(w.message)]
    assert bool(said) == warned
    if warned:
        assert "--train_for" in said[0] and "planned:order=3-1-5-2-4-0-7-8-6" in said[0]


def test_help_lists_the_config_flag(capsys):
    from jointobj.training.recipe import parse_recipe_args

    with pytest.raises(SystemExit):
        parse_recipe_args(["--help"], default_config=None)
    shown = capsys.readouterr().out
    assert "--config FILE.yaml" in shown and "flags given on the command line win" in shown

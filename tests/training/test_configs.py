"""Every DeepSpeed config and every recipe YAML loads; each YAML starts with its launch command."""

import re
from pathlib import Path

import pytest
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

from jointobj.training.recipe import parse_recipe_args
from jointobj.training.trainer import JointObjConfig

ROOT = Path(__file__).resolve().parents[2]
DS_CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
YAMLS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))


def test_every_deepspeed_config_the_docs_and_errors_name_exists():
    named = set()
    for path in [ROOT / "README.md", *ROOT.glob("recipes/**/*.py"), *YAMLS, *ROOT.glob("jointobj/**/*.py")]:
        named |= set(re.findall(r"ds_configs/(\w+)\.json", path.read_text()))
    assert named and named <= {p.stem for p in DS_CONFIGS}, named - {p.stem for p in DS_CONFIGS}
    assert {p.stem for p in DS_CONFIGS} >= {"zero2", "zero2_offload", "zero3", "zero3_offload"}


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.stem)
def test_deepspeed_config_loads_with_auto_values_and_no_fixed_precision(path):
    config = HfTrainerDeepSpeedConfig(str(path))
    assert config.get_value("zero_optimization.stage") in (2, 3)
    assert config.get_value("bf16.enabled") == "auto" and config.get_value("fp16.enabled") == "auto"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_recipe_yaml_parses_and_names_its_launch_command(path, tmp_path):
    first_line = path.read_text().splitlines()[0]
    recipe = re.search(r"recipes/\w+\.py", first_line)  # logsum_llada.yaml launches recipes/logsum.py
    assert first_line.startswith("# deepspeed") and recipe, first_line
    assert f"--config recipes/configs/{path.name}" in first_line, first_line
    assert (ROOT / recipe.group()).exists()
    model_args, data_args, config = parse_recipe_args(["--config", str(path), "--output_dir", str(tmp_path)], None)
    assert config.output_dir == str(tmp_path)  # flags override the YAML
    assert config.deepspeed is None or Path(config.deepspeed).exists()


def test_deepspeed_json_that_does_not_parse_is_named(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 3,}}')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        JointObjConfig(output_dir=str(tmp_path), deepspeed=str(broken))


def test_missing_deepspeed_json_points_at_ds_configs(tmp_path):
    with pytest.raises(FileNotFoundError, match="see ds_configs/"):
        JointObjConfig(output_dir=str(tmp_path), deepspeed=str(tmp_path / "zero9.json"))


def test_help_shows_the_values_the_yaml_sets(capsys):
    # Fails while --help shows the dataclass defaults (base_steps 1200, three sets) instead of the YAML's.
    import yaml

    path = ROOT / "recipes" / "configs" / "logsum.yaml"
    with pytest.raises(SystemExit):
        parse_recipe_args(["--help"], default_config=path)
    shown = " ".join(capsys.readouterr().out.split())
    values = yaml.safe_load(path.read_text())
    for key in ("base_steps", "dataset", "max_steps", "learning_rate", "report_decoders"):
        flag = re.search(rf"--{key} .*?\(default: (.*?)\)", shown)
        assert flag and flag.group(1).replace(" ", "") == str(values[key]), (key, flag and flag.group(1))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_recipe_yaml_parses_without_deprecation_warnings(path, tmp_path):
    # Fails while logsum_llada.yaml's gradient_checkpointing reaches transformers 5 under its deprecated name.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        parse_recipe_args(["--config", str(path), "--output_dir", str(tmp_path)], None)


@pytest.mark.parametrize("name", ["gradient_checkpointing", "activation_checkpointing"])
def test_either_name_of_activation_checkpointing_turns_it_on_quietly(name, tmp_path):
    import dataclasses
    import warnings

    from transformers import TrainingArguments

    from jointobj.training.recipe import installed_name

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, _, config = parse_recipe_args([f"--{name}", "--output_dir", str(tmp_path), "--report_to", "none"], None)
    assert getattr(config, installed_name("activation_checkpointing", fields)) is True

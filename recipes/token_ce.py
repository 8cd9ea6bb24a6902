"""Fine-tune a masked diffusion LM with the per-token masked CE (the MDLM / LLaDA baseline), LoRA + DeepSpeed ZeRO.

Embedded default (nothing downloaded: tiny base pretrained on the toy suite, fine-tuned, evaluated):

    deepspeed recipes/token_ce.py

Your model and data, LLaDA-8B on 8 GPUs under ZeRO-3: start from the real-model settings of
recipes/configs/logsum_llada.yaml (batch 1 x 16 accumulation per GPU, lr 1e-4, bf16, gradient
checkpointing) and set the objective (with its own keyword arguments: none, the defaults, here);
recipes/configs/token_ce.yaml is sized for the embedded tiny model:

    deepspeed --num_gpus 8 recipes/token_ce.py --config recipes/configs/logsum_llada.yaml \\
        --objective token_ce --objective_kwargs '{}' \\
        --model_name_or_path /models/LLaDA-8B-Instruct --dataset data/sft.jsonl --output_dir runs/llada-token-ce

Every field of ModelArguments, DataArguments (jointobj.training.recipe) and JointObjConfig (jointobj.training.trainer)
is a flag; `python recipes/token_ce.py --help` lists them.
"""

from pathlib import Path

from jointobj.training.recipe import RecipeResult, recipe_main, run_recipe

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "token_ce.yaml"


def main(argv: list[str] | None = None) -> RecipeResult:
    return run_recipe(argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    recipe_main(DEFAULT_CONFIG)  # a user's mistake: one `jointobj: error:` line, not a traceback

"""Fine-tune a masked diffusion LM with the log-sum over generation orders (mixed with the per-token CE).

LoRA + DeepSpeed ZeRO.

Embedded default (nothing downloaded: tiny base pretrained on the toy suite, fine-tuned, evaluated):

    deepspeed recipes/logsum.py

Your model and data, LLaDA-8B on 8 GPUs under ZeRO-3 (recipes/configs/logsum_llada.yaml: K = 8
blocks, sampled gradient, batch 1 x 16 accumulation per GPU, lr 1e-4, bf16, gradient checkpointing):

    deepspeed --num_gpus 8 recipes/logsum.py --config recipes/configs/logsum_llada.yaml \\
        --model_name_or_path /models/LLaDA-8B-Instruct --dataset data/sft.jsonl --output_dir runs/llada-logsum

(recipes/configs/logsum.yaml is sized for the embedded tiny model: every block, batch 64, lr 2e-3.)

Every field of ModelArguments, DataArguments (jointobj.training.recipe) and JointObjConfig (jointobj.training.trainer)
is a flag; `python recipes/logsum.py --help` lists them.
"""

from pathlib import Path

from jointobj.training.recipe import RecipeResult, recipe_main, run_recipe

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "logsum.yaml"


def main(argv: list[str] | None = None) -> RecipeResult:
    return run_recipe(argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    recipe_main(DEFAULT_CONFIG)  # a user's mistake: one `jointobj: error:` line, not a traceback

"""Train a sequence-level energy head by noise-contrastive estimation (EDLM-style), LoRA + DeepSpeed ZeRO.

The denoiser's own one-step sampler writes the negatives; a small MLP on its pooled hidden states
learns to tell them from the data, trained with the LoRA adapter and saved with it (peft's
modules_to_save). The per-token CE is kept beside the NCE loss so the adapter stays a denoiser.

Embedded default (nothing downloaded: tiny base pretrained on the toy suite, fine-tuned, evaluated):

    deepspeed recipes/energy.py

Your model and data, LLaDA-8B on 8 GPUs: start from the real-model settings of
recipes/configs/logsum_llada.yaml (batch 1 x 16 accumulation per GPU, lr 1e-4, bf16, gradient
checkpointing), set the objective and its keyword arguments as recipes/configs/energy.yaml does (that
file is otherwise sized for the embedded tiny model), and use ZeRO-2 (offload if memory is short): the
negatives' sampler runs as many forwards as each rank's answers need, which ZeRO-3's collective
weight gathers cannot allow, so the energy objective refuses ZeRO-3 on several ranks.

    deepspeed --num_gpus 8 recipes/energy.py --config recipes/configs/logsum_llada.yaml --objective energy \\
        --deepspeed ds_configs/zero2_offload.json \\
        --objective_kwargs '{"negatives": 2, "added_token_ce_weight": 1.0, "head_width": 64}' \\
        --model_name_or_path /models/LLaDA-8B-Instruct --dataset data/sft.jsonl --output_dir runs/llada-energy

Then rescore with the head it saved (SIR with 8 candidates, after the loop or inside it):

    python eval/joint_validity.py --model runs/energy --toyset likes_tennis,cities,shuffle_3,agreement \\
        --decoder random --tokens-per-step 1,all --rescore "sir:head,8" --json runs/energy/rescore.json

Every field of ModelArguments, DataArguments (jointobj.training.recipe) and JointObjConfig (jointobj.training.trainer)
is a flag; `python recipes/energy.py --help` lists them. The objective's own options (EnergyNCELoss's
keyword arguments) go in --objective_kwargs, JSON on the command line.
"""

from pathlib import Path

from jointobj.training.recipe import RecipeResult, recipe_main, run_recipe

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "energy.yaml"


def main(argv: list[str] | None = None) -> RecipeResult:
    return run_recipe(argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    recipe_main(DEFAULT_CONFIG)  # a user's mistake: one `jointobj: error:` line, not a traceback

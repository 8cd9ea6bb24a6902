"""Train the learned draft head (jointobj/model/draft_head.py): distil the model's own sequential law, DeepSpeed ZeRO.

The exact speculative decoder verifies a window of drafts against the model's one-token-per-step
conditionals; the head drafts the window jointly. This recipe trains it on the Trainer path the
other recipes use (checkpoints, resume, --seed): each step draws the model's own l2r-law answers for
the batch's prompts (or takes the data's answers, `answers: data`), computes the model's conditionals
along them (no grad) and fits the head to them, KL(p || q) teacher-forced over a window after a
uniform cut (jointobj/objectives/draft_distillation.py). The denoiser, its adapter included, is frozen
unless `train_denoiser: true` (then the adapter trains on the per-token CE of the data beside it).
The head is saved beside the model or adapter (draft_head.safetensors; jointobj.json records it), and
`build_decoder("speculative", draft="head")` drafts with it.

Embedded default (nothing downloaded: the tiny base pretrained on the toy suite, reused from runs/base):

    deepspeed recipes/draft_head.py

Your model, its own samples for your prompts (the responses of --dataset are not used unless
`answers: data`), on 8 GPUs; ZeRO-2 (the sampler's forward count differs between ranks, so ZeRO-3 on
several ranks is refused):

    deepspeed --num_gpus 8 recipes/draft_head.py --model_name_or_path /models/LLaDA-8B-Instruct \\
        --trust_remote_code --dataset data/prompts.jsonl --output_dir runs/llada-draft-head --bf16 true \\
        --deepspeed ds_configs/zero2.json \\
        --objective_kwargs '{"answers": "samples", "width": 256, "layers": 2, "heads": 4, "max_positions": 64}'

Resume a killed run from its newest complete checkpoint (the head's weights and its optimizer state):
add --resume_from_checkpoint latest. Measure the head with eval/draft_head.py (tokens per step, rows per
token, its FLOPs against a denoiser forward). `python recipes/draft_head.py --help` lists every flag; the
objective's options (DraftDistillationLoss's keyword arguments) go in --objective_kwargs.
"""

from pathlib import Path

from jointobj.training.recipe import RecipeResult, recipe_main, run_recipe

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "draft_head.yaml"


def main(argv: list[str] | None = None) -> RecipeResult:
    return run_recipe(argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    recipe_main(DEFAULT_CONFIG)  # a user's mistake: one `jointobj: error:` line, not a traceback

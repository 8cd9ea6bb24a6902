"""Soft-state vs hard decoding at equal forwards, for models trained with and without self-conditioning.

Train the two models with the recipe, from one embedded tiny base, identical but for the option
(full fine-tuning; `--deepspeed ""` turns the YAML's ZeRO-2 off on a machine without CUDA):

    python recipes/token_ce.py --dataset likes_tennis,cities,shuffle_3,agreement --deepspeed "" \\
        --base_dir runs/soft/base --lora_r 0 --max_steps 1200 --learning_rate 0.003 \\
        --save_strategy no --report_samples 0 --output_dir runs/soft/plain
    python recipes/token_ce.py --dataset likes_tennis,cities,shuffle_3,agreement --deepspeed "" \\
        --base_dir runs/soft/base --lora_r 0 --max_steps 1200 --learning_rate 0.003 \\
        --save_strategy no --report_samples 0 --output_dir runs/soft/self_cond \\
        --objective_kwargs '{"self_condition_prob": 0.5}'

then compare:

    python eval/soft_vs_hard.py --model plain=runs/soft/plain --model self_cond=runs/soft/self_cond \\
        --toyset likes_tennis,cities,shuffle_3,agreement --tokens-per-step 1,2,3,all --samples 1000 \\
        --json out/soft_vs_hard.json

Every decoder variant of a row gets the same step budget ceil(L / K) (K = `--tokens-per-step`),
the same prompts and a generator seeded alike; adaptive ones (threshold, soft) may stop early, so
read `steps_per_sample` (sequential forwards) and `rows_per_sample` (compute) beside validity and
TV. Variants (`--variants`, or add your own with `--variant label=decoder:key=value,key=value`):
"""

from __future__ import annotations

import argparse
import sys

import torch
import yaml

from jointobj.cli.progress import add_no_progress
from jointobj.decoding.budget import parse_tokens_per_step
from jointobj.evaluation.report import format_table, write_json
from jointobj.evaluation.sweep import evaluate
from jointobj.model.denoiser import Denoiser
from jointobj.toysets.builtin import load_toyset

VARIANTS: dict[str, tuple[str, dict]] = {
    "confidence": ("confidence", {}),  # hard, top-k by max probability, ceil(n / s) per step
    "threshold": ("threshold", {}),  # hard, Fast-dLLM's 0.9 rule with that quota as a floor
    # Controls: the soft decoder's commit rule with plain masks (a = 0), so the soft rows below
    # differ from them only by what the open positions show the model.
    "masks_threshold": ("soft", {"mixing": 0.0, "breaker": "none"}),  # > 0.9 commits, the rest at the end
    "masks_commit_one": ("soft", {"mixing": 0.0, "breaker": "commit_one"}),  # + the most confident each step
    "soft": ("soft", {}),  # defaults: Gumbel breaker, state temperature 0.25, a = 1, threshold rule
    "soft_quota": ("soft", {"quota": True}),  # the `threshold` decoder's commit rule exactly, plus states
    "soft_half_mix": ("soft", {"mixing": 0.5}),  # states half mask
    "soft_no_breaker": ("soft", {"breaker": "none"}),  # what the breaker buys
    "soft_commit_one": ("soft", {"breaker": "commit_one"}),  # hard symmetry breaker; control: masks_commit_one
}
__doc__ += "".join(f"\n    {label:<16} {name} {options or ''}" for label, (name, options) in VARIANTS.items())

COLUMNS = ["model", "toyset", "decoder", "requested_tokens_per_step", "steps_per_sample", "rows_per_sample",
           "validity", "validity_low", "validity_high", "tv", "tv_floor", "coverage"]


def _pair(text: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep or not label or not value:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, got {text!r}")
    return label, value


def parse_variant(text: str) -> tuple[str, tuple[str, dict]]:
    """'label=decoder:key=value,key=value' -> (label, (decoder, options)); values read as YAML scalars."""
    label, spec = _pair(text)
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, value = _pair(item)
        options[key] = yaml.safe_load(value)
    return label, (name, options)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", action="append", type=_pair, required=True, metavar="LABEL=DIR",
                        help="a Denoiser directory and its label in the table; repeat for several")
    parser.add_argument("--toyset", default="likes_tennis,cities,shuffle_3,agreement")
    parser.add_argument("--tokens-per-step", default="1,2,all", help="comma-separated K (>= 1) or 'all'")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated labels of VARIANTS")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="LABEL=DECODER:K=V,...",
                        help="an extra decoder variant, e.g. soft_k2=soft:top_k=2,mixing=0.8")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", required=True, metavar="FILE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_no_progress(parser)
    return parser.parse_args(argv)


def chosen_variants(args: argparse.Namespace) -> dict[str, tuple[str, dict]]:
    labels = [t.strip() for t in args.variants.split(",") if t.strip()]
    unknown = [label for label in labels if label not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)} "
                         "(or define one with --variant)")
    return {**{label: VARIANTS[label] for label in labels}, **dict(args.variant)}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    toysets = [load_toyset(name.strip()) for name in args.toyset.split(",")]
    ks = [k.strip() for k in args.tokens_per_step.split(",")]
    for k in ks:
        parse_tokens_per_step(k)
    variants = chosen_variants(args)
    rows = []
    for label, directory in args.model:
        denoiser = Denoiser.from_pretrained(directory).to(args.device).eval()
        for variant, (name, options) in variants.items():
            for row in evaluate(denoiser, toysets, [name], ks, args.samples, args.seed,
                                decoder_options={name: options}, batch_size=args.batch_size):
                rows.append({"model": label, **row, "decoder": variant, "decoder_name": name, "options": options,
                             "seed": args.seed})
            print(f"{label} {variant}: done", file=sys.stderr, flush=True)
    write_json(args.json, rows)
    order = {v: i for i, v in enumerate(variants)}
    rows_shown = sorted(rows, key=lambda r: (r["toyset"], str(r["requested_tokens_per_step"]), r["model"],
                                             order[r["decoder"]]))
    print(format_table(rows_shown, COLUMNS))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])

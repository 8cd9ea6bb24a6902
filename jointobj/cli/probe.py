r"""`jointobj probe`: the frequency-collapse probe, what a model predicts at positions far from any visible token.

    jointobj probe --model runs/agreement --toyset agreement --masks 32 \
        --json out/collapse.json --plot out/collapse.png

After "On the Role of Discreteness in Diffusion LLMs": a prompt of the toy set followed by
N mask positions, one forward. Per position (by distance from the context): the top-3
tokens with probabilities, the entropy, and KL(prediction || unigram) to the set's
answer-token unigram distribution. A model that falls back on token frequencies far from
the context shows the KL going to 0 and the entropy rising to the unigram's. The maths is
`jointobj.evaluation.probes.mask_run_profile`; this command prints, plots and saves it.
"""

from __future__ import annotations

import argparse

import torch

from jointobj.cli.progress import add_no_progress
from jointobj.evaluation.probes import mask_run_profile
from jointobj.evaluation.report import format_table, plot_position_profile, write_json
from jointobj.toysets.builtin import load_toyset

COLUMNS = ["distance", "top_tokens", "top_probs", "entropy", "kl_to_unigram"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jointobj probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, metavar="DIR", help="a Denoiser directory (Denoiser.save_pretrained)")
    parser.add_argument("--toyset", required=True,
                        help="the toy set the model was trained on (its prompt and unigram): a name or "
                             "module:attribute")
    parser.add_argument("--masks", required=True, type=int, help="number of mask positions after the prompt")
    parser.add_argument("--json", required=True, metavar="FILE")
    parser.add_argument("--plot", metavar="FILE", help="PNG of entropy and KL vs distance")
    parser.add_argument("--prompt-index", type=int, default=0, help="which of the set's prompts (conditional sets)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust-remote-code", action="store_true")
    add_no_progress(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    from jointobj.model.denoiser import Denoiser

    args = parse_args(argv)
    toyset = load_toyset(args.toyset)
    denoiser = Denoiser.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).to(args.device).eval()
    rows = mask_run_profile(denoiser, toyset, args.masks, prompt_index=args.prompt_index)
    prompt = toyset.describe(toyset.prompts[args.prompt_index])
    write_json(args.json, [{**r, "model": args.model, "toyset": toyset.name, "prompt": prompt} for r in rows])
    print(f"prompt: {prompt!r} + {args.masks} masks; unigram entropy {rows[0]['unigram_entropy']:.3f} nats")
    print(format_table(rows, COLUMNS))
    if args.plot:
        plot_position_profile(rows, args.plot, title=f"{toyset.name}: {args.masks} masks")
    return rows


r"""`jointobj generate`: text from a model directory with any decoder, one prompt per line.

    echo "<likes_tennis>" | jointobj generate --model runs/likes --decoder confidence --gen-length 3
    jointobj generate --model runs/likes --prompts prompts.txt --decoder threshold --threshold 0.9 \
        --tokens-per-step 2 --gen-length 32 --stop "\n\n" --out answers.txt

Prompts come from `--prompts FILE` (or stdin when it is absent or '-'), one per line, tokenized
without special tokens (apply your chat template first; write a literal newline as \n). Each
answer is cut at the model's EOS and at the first `--stop` string, and printed on one line
(newlines escaped as \n), or written to `--out`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from jointobj.cli.progress import add_no_progress
from jointobj.decoding.registry import DECODERS, decoder_option_names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jointobj generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", required=True, metavar="DIR", help="a Denoiser directory (save_pretrained)")
    parser.add_argument("--prompts", default="-", metavar="FILE", help="one prompt per line; '-' or absent: stdin")
    parser.add_argument("--decoder", default="confidence", help=f"known: {', '.join(DECODERS)}")
    parser.add_argument("--tokens-per-step", default="1", help="K (>= 1) or 'all'")
    parser.add_argument("--gen-length", type=int, required=True, help="tokens generated per prompt")
    parser.add_argument("--stop", action="append", default=[], help="cut answers before this string (repeatable)")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--block-length", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=None, help="confidence threshold of `threshold`")
    parser.add_argument("--entropy-bound", type=float, default=None, help="bound (nats) of `entropy_bounded`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", metavar="FILE", help="write the answers here (one per line) instead of stdout")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model directory's own code")
    add_no_progress(parser)
    return parser.parse_args(argv)


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def read_prompts(source: str) -> list[str]:
    """Prompt lines from a file or stdin ('-'); blank lines are skipped, literal \\n becomes a newline."""
    lines = sys.stdin.read().splitlines() if source == "-" else open(source, encoding="utf-8").read().splitlines()
    prompts = [_unescape(line) for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {'stdin' if source == '-' else source}; give one prompt per line")
    return prompts


def main(argv: list[str] | None = None) -> list[str]:
    from jointobj.evaluation.generation import generate_texts
    from jointobj.model.denoiser import Denoiser

    args = parse_args(argv)
    given = {"temperature": args.temperature, "block_length": args.block_length, "threshold": args.threshold,
             "bound": args.entropy_bound}
    options = {k: v for k, v in given.items() if v is not None and k in decoder_option_names(args.decoder)}
    prompts = read_prompts(args.prompts)
    denoiser = Denoiser.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    denoiser = denoiser.to(args.device).eval()
    texts = generate_texts(denoiser, prompts, args.decoder, args.gen_length, args.tokens_per_step, options=options,
                           stop=[_unescape(s) for s in args.stop], seed=args.seed, batch_size=args.batch_size)
    lines = "".join(text.replace("\n", "\\n") + "\n" for text in texts)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        sys.stdout.write(lines)
    return texts

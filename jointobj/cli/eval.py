r"""`jointobj eval`: joint validity, fidelity and cost of parallel decoders on the marginal-trap toy sets.

    jointobj eval --oracle --toyset likes_tennis,cities,shuffle_3 \
        --decoder random,l2r,confidence,threshold --tokens-per-step 1,2,4,all \
        --samples 2000 --seed 0 --json out/validity.json --plot out/validity.png

    jointobj eval --model runs/agreement --toyset agreement --decoder confidence \
        --tokens-per-step 1,2,all --samples 1000 --seed 0 --json out/model.json --compare-oracle

    jointobj eval --model runs/base --model runs/logsum --compare-oracle --toyset latin_square_3 \
        --decoder l2r,confidence --tokens-per-step 1,2 --grid "speculative:tokens_per_step=all,drafts=1" \
        --samples 400 --json out/both.json --frontier out/both.png

`--oracle` decodes with the exact denoiser of the requested sets (the best any model can do
with each decoder); `--model DIR` loads `Denoiser.from_pretrained(DIR)`, and repeated (base and
fine-tuned, say) puts every model on one table (a `model` column), headline and plot, one
colour per model and one marker per decoder. Prints a table and
ends with the headline: per decoder and set, the highest tokens per step at which validity
stays >= 99%. The JSON file is a list of rows (keys: see `jointobj.evaluation.sweep.evaluate`, plus
model and seed). `--tokens-per-step` for threshold / entropy_bounded is a step budget of
ceil(L / K) steps; the table reports the measured tokens per step.

Energy rescoring (`--rescore SPEC`, repeatable; or several SPECs joined by ';') adds, for
every decoder and K, a row per SPEC besides the plain one:

    SPEC = MODE:ENERGY,N[,WHERE]
    MODE   best (lowest energy of N) | sir (resampled ∝ exp(-E) / q)
    ENERGY self[:ORDER[:K]]  the model's own K-block likelihood (ORDER l2r | r2l | random, K int | all)
           head             the learned energy head saved with the model (recipes/energy.py)
           causal:DIR       an external causal LM directory (same tokenizer)
           exact            the toy set's true probability (oracle knowledge: the ceiling)
    N      candidates per prompt (>= 1)
    WHERE  end (default: rescore finished samples) | loop (in the loop, complete candidates)
           | step (in the loop, only this step's positions drawn and scored; self / exact)
           | fused (step, the energy and the next step's marginals in one sequential step)

    jointobj eval --oracle --toyset latin_square_4 --decoder random --tokens-per-step 4 \
        --rescore "best:self:l2r:all,8" --rescore "sir:exact,16,step" --samples 1000 --json out/rescore.json

Steps and rows per sample count every candidate and every energy forward.

The frontier (`--grid NAME:KEY=V1|V2[,KEY=V1|V2]`, repeatable) sweeps any decoder's knobs: every
combination of the listed option values (`all` / `none` mean None; a `tokens_per_step` key
replaces --tokens-per-step for that decoder). Rows then carry `knobs` and `rows_per_token`
(forward rows per generated token); `--frontier FILE` draws validity and rows per token against
tokens per step, every decoder (and the oracle, with --compare-oracle) on one picture. Sets of
>= 8 answer tokens end with the target status (>= 4 tokens per step at the model's own l2r K=1
validity and TV, <= 32 rows per token; needs l2r at K=1 among the rows):

    jointobj eval --oracle --toyset latin_square_3,latin_square_4 --decoder l2r,confidence \
        --tokens-per-step 1,2,4 --grid "speculative:tokens_per_step=all,drafts=1|4|16" \
        --grid "threshold:tokens_per_step=1,threshold=0.5|0.7|0.9" --rescore "best:self:l2r:all,8" \
        --samples 1000 --json out/frontier.json --frontier out/frontier.png
"""

from __future__ import annotations

import argparse

import torch

from jointobj.cli.progress import add_no_progress
from jointobj.decoding.budget import parse_tokens_per_step
from jointobj.decoding.registry import DECODERS, decoder_option_names
from jointobj.decoding.rescore import RescoreSpec
from jointobj.evaluation.frontier import TARGET, TARGET_COLUMNS, parse_grid, target_status
from jointobj.evaluation.report import format_headline, format_table, plot_frontier, plot_validity, write_json
from jointobj.evaluation.sweep import evaluate, headline
from jointobj.toysets.combined import load_toysets
from jointobj.utils.errors import user_errors
from jointobj.utils.registry import split_names

COLUMNS = ["toyset", "decoder", "knobs", "requested_tokens_per_step", "tokens_per_step", "validity", "validity_low",
           "validity_high", "tv", "tv_floor", "coverage", "coverage_exact", "decoder_nll", "entropy_nats",
           "steps_per_sample", "rows_per_sample",
           "rows_per_token", "wall_s"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jointobj eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--oracle", action="store_true", help="decode with the exact oracle of the toy sets")
    source.add_argument("--model", metavar="DIR", action="append",
                        help="a Denoiser directory (Denoiser.save_pretrained); repeat it to put several models (e.g. "
                             "base and fine-tuned) on one table, headline and plot")
    parser.add_argument("--toyset", required=True, type=split_names,
                        help="comma-separated toy set names, or import references module:attribute of your own sets "
                             "(jointobj/toysets/user_sets.py)")
    parser.add_argument("--decoder", default=[], type=split_names,
                        help=f"comma-separated; known: {', '.join(DECODERS)}")
    parser.add_argument("--tokens-per-step", default=["1"], type=split_names, help="comma-separated K (>= 1) or 'all'")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME:KEY=V1|V2[,...]",
                        help="sweep a decoder's options (repeatable; see above)")
    parser.add_argument("--frontier", metavar="FILE", help="PNG of validity and rows per token vs tokens per step")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder-nll", action="store_true",
                        help="also the NLL of the set's answers under each decoder run (its exact law; about two "
                             "decodes more per setting)")
    parser.add_argument("--json", required=True, metavar="FILE")
    parser.add_argument("--plot", metavar="FILE", help="PNG of validity vs tokens per step")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--block-length", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=None, help="confidence threshold of `threshold` (0.9)")
    parser.add_argument("--entropy-bound", type=float, default=None, help="bound (nats) of `entropy_bounded` (0.1)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model directory's own code")
    parser.add_argument("--no-compat", dest="compat", action="store_false",
                        help="no compatibility rules for 4.x-era remote code (jointobj/model/compat.py)")
    parser.add_argument("--compare-oracle", action="store_true",
                        help="with --model: also run the oracle (dashed in the plot)")
    parser.add_argument("--rescore", action="append", default=[], metavar="SPEC",
                        help="energy rescoring, MODE:ENERGY,N[,WHERE] (see above); repeatable, or joined by ';'")
    add_no_progress(parser)
    args = parser.parse_args(argv)
    args.grid = dict(parse_grid(text) for text in args.grid)  # a malformed grid fails here, with an example
    args.tokens_per_step = [parse_tokens_per_step(k) for k in args.tokens_per_step]  # as is a bad K
    if not args.decoder and not args.grid:
        raise ValueError("nothing to evaluate: give --decoder NAMES, --grid NAME:KEY=V1|V2, or both")
    if args.model and len(set(args.model)) < len(args.model):
        raise ValueError(f"--model names a directory twice: {', '.join(args.model)}")
    return args


def decoder_options(args: argparse.Namespace) -> dict[str, dict]:
    """Each decoder gets the command-line options it takes."""
    given = {"temperature": args.temperature, "block_length": args.block_length, "threshold": args.threshold,
             "bound": args.entropy_bound}
    given = {k: v for k, v in given.items() if v is not None}
    names = [*args.decoder, *args.grid]
    return {name: {k: v for k, v in given.items() if k in decoder_option_names(name)} for name in names}


def load_denoiser(args: argparse.Namespace, toysets: list, model: str | None):
    """The oracle of `toysets` (model None) or the Denoiser in directory `model`."""
    from jointobj.toysets.oracle import OracleDenoiser

    if model is None:
        return OracleDenoiser(*toysets)
    from jointobj.model.denoiser import Denoiser

    with user_errors():  # a missing or unusable model directory is the user's to fix
        denoiser = Denoiser.from_pretrained(model, trust_remote_code=args.trust_remote_code, compat=args.compat)
    return denoiser.to(args.device).eval()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    toysets = load_toysets(args.toyset)  # on one vocabulary; unknown names fail here, listing the known ones
    options = decoder_options(args)
    rescore = [RescoreSpec.parse(spec) for text in args.rescore for spec in text.split(";") if spec.strip()]
    sweep = dict(toysets=toysets, decoders=args.decoder, tokens_per_step=args.tokens_per_step, samples=args.samples,
                 seed=args.seed, decoder_options=options, grid=args.grid, batch_size=args.batch_size, rescore=rescore,
                 decoder_nll=args.decoder_nll)
    rows = []
    for model in [None] if args.oracle else args.model:  # one model at a time in memory
        for row in evaluate(load_denoiser(args, toysets, model), **sweep):
            rows.append({**row, "model": model or "oracle", "seed": args.seed})
    oracle_rows = []
    if args.compare_oracle and not args.oracle:
        oracle_rows = [{**row, "model": "oracle", "seed": args.seed}
                       for row in evaluate(load_denoiser(args, toysets, None), **sweep)]
    several = len({row["model"] for row in rows + oracle_rows}) > 1
    write_json(args.json, rows + oracle_rows)
    print(format_table(rows + oracle_rows, (["model"] if several else []) + COLUMNS))
    if args.plot:
        plot_validity(rows, args.plot, oracle_rows=oracle_rows)
    if args.frontier:
        plot_frontier(rows + oracle_rows, args.frontier)
    print("\nheadline (highest tokens per step with validity >= 99%):")
    for model in dict.fromkeys(row["model"] for row in rows):
        if several:
            print(f"{model}:")
        print(format_headline(headline([row for row in rows if row["model"] == model])))
    status = target_status(rows + oracle_rows)
    if status:
        print(f"\n{TARGET.describe()}")
        print(format_table(status, TARGET_COLUMNS))
    return rows

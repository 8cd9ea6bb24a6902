"""Energy rescoring, measured: validity, TV and cost of best-of-N and SIR with each energy, after
the loop and inside it, on the marginal-trap toy sets.

    python eval/rescoring.py --json out/rescoring_oracle.json                # the oracle as proposal
    python eval/rescoring.py --model runs/energy --toyset likes_tennis,cities,agreement \\
        --energies head,self:l2r:all,self:l2r:2 --json out/rescoring_model.json   # a trained model + its head

The proposal is the `random` policy (its log_prob is exact given the order, so SIR is well
defined) at one and two sampler steps (K = all, ceil(L / 2)). With `--oracle` (the default) it
is the exact denoiser: what is left is the decoder's marginal trap alone. Every (set, K) gets the
plain decoder, then `MODE:ENERGY,N` after the loop for MODE in --modes, ENERGY in --energies, N
in --candidates. Inside the loop, at K = ceil(L / 2) tokens per denoising step (and 6, 4, 2 on
sets of >= 8 generated tokens):

- `exact`, `step` scope (this step's positions drawn and scored; free, so one sequential step
  per denoising step): MODE x --in-loop-candidates, the ceiling of in-loop rescoring;
- `self:...`, `fused` scope (energy and next marginals in one sequential step: 1 + D steps),
  SIR x --fused-candidates, at the K that can reach 4 tokens per step (ceil(L / 2) and 6);
  its unfused `step` twin draws the same samples in 2 D steps;
- heads and causal LMs score complete sequences only: `loop` scope, MODE x --in-loop-candidates.

Prints a table, writes a JSON list of rows (jointobj.evaluation.sweep keys, plus model and seed), and
ends with the rescoring target per set of >= 8 generated tokens: validity >= 99% with TV within
0.02 of the exact sampler's floor at >= 4 tokens per sequential step, met or missed, with the
best row at >= 4 tokens per step and the compute beside it. Costs follow jointobj.evaluation.metrics.Cost: an energy
forward is a sequential step (in the loop: two per denoising step, not fused); `exact` is free
(oracle knowledge, the ceiling of what any energy can buy).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import torch

from jointobj.cli.progress import add_no_progress
from jointobj.decoding.energies import build_energy
from jointobj.decoding.registry import build_decoder
from jointobj.decoding.rescore import RescoreSpec
from jointobj.evaluation.frontier import TARGET
from jointobj.evaluation.report import format_table, write_json
from jointobj.evaluation.sweep import VALIDITY_LEVEL, evaluate
from jointobj.toysets.builtin import load_toyset
from jointobj.utils.registry import split_names

SETS = "likes_tennis,cities,shuffle_3,shuffle_6,latin_square_4,sudoku_4,agreement"
COLUMNS = ["toyset", "decoder", "requested_tokens_per_step", "tokens_per_step", "validity", "validity_low",
           "validity_high", "coverage", "coverage_exact", "tv", "tv_floor", "steps_per_sample", "rows_per_sample",
           "wall_s"]
# The frontier's Target, with the sweep's absolute validity level (0.99) in place of the model's own l2r K=1 validity:
# the oracle rescored by its own exact energy has no training gap to keep within
TARGET_VALIDITY, TARGET_TV_GAP, TARGET_TOKENS_PER_STEP, LONG = (VALIDITY_LEVEL, TARGET.tv_gap, TARGET.tokens_per_step,
                                                           TARGET.min_answer_tokens)
PARTIAL = ("self", "exact")  # energies that marginalise masked positions (the `step` scope)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR", help="a Denoiser directory (default: the oracle of each set)")
    parser.add_argument("--toyset", type=split_names, default=split_names(SETS))
    parser.add_argument("--energies", type=split_names, default=["exact", "self:l2r:all", "self:l2r:2"],
                        help="energy specs (jointobj.decoding.energies); 'exact' needs nothing but the set")
    parser.add_argument("--modes", type=split_names, default=["best", "sir"])
    parser.add_argument("--candidates", type=lambda t: [int(n) for n in split_names(t)], default=[2, 4, 8, 16])
    parser.add_argument("--in-loop-candidates", type=lambda t: [int(n) for n in split_names(t)], default=[4, 16, 64])
    parser.add_argument("--fused-candidates", type=lambda t: [int(n) for n in split_names(t)], default=[16, 64])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=125, help="prompts per batch (x N candidates)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    parser.add_argument("--json", required=True, metavar="FILE")
    add_no_progress(parser)
    return parser.parse_args(argv)


def in_loop_specs(k: int, half: int, args: argparse.Namespace) -> list[str]:
    """The in-loop specs run at k tokens per denoising step (see the module doc)."""
    specs = []
    for energy in args.energies:
        kind = energy.split(":")[0]
        if kind == "exact":
            specs += [f"{mode}:{energy},{n},step" for mode in args.modes for n in args.in_loop_candidates]
        elif kind in PARTIAL and k in (half, 6):
            specs += [f"sir:{energy},{n},fused" for n in args.fused_candidates]
        elif kind not in PARTIAL:
            specs += [f"{mode}:{energy},{n},loop" for mode in args.modes for n in args.in_loop_candidates]
    return specs


def runnable(specs: list[str], k: int | str, denoiser, toyset) -> list[str]:
    """The specs a decoder at K accepts; the others (SIR with a residual head off its own sampler)
    are named on stderr and skipped."""
    kept = []
    for text in specs:
        spec = RescoreSpec.parse(text)
        energy = build_energy(spec.energy, denoiser=denoiser, toysets=[toyset])
        try:
            build_decoder("random", None if k == "all" else k, rescore=dataclasses.replace(spec, energy=energy))
            kept.append(text)
        except ValueError as error:
            print(f"skipped {text} at K={k}: {str(error).split(';')[0]}", file=sys.stderr)
    return kept


def sweep_set(denoiser, toyset, args: argparse.Namespace) -> list[dict]:
    """Plain and after-the-loop rows at one and two sampler steps, then the in-loop rows."""
    length = toyset.answer_length
    half = math.ceil(length / 2)
    end = [f"{mode}:{energy},{n}" for energy in args.energies for mode in args.modes for n in args.candidates]
    common = dict(samples=args.samples, seed=args.seed, batch_size=args.batch_size)
    rows = []
    for k in ("all", half):
        rows += evaluate(denoiser, [toyset], ["random"], [k], rescore=runnable(end, k, denoiser, toyset), **common)
    for k in sorted({half, 6, 4, 2} if length >= LONG else {half}, reverse=True):
        specs = runnable(in_loop_specs(k, half, args), k, denoiser, toyset)
        for row in evaluate(denoiser, [toyset], ["random"], [k], rescore=specs, **common):
            if row["rescore"] is not None or k != half:  # the plain K = L/2 row is already above
                rows.append(row)
    return rows


def target(rows: list[dict]) -> list[str]:
    """Per set of >= 8 generated tokens: the issue's target met or missed, and the best rows --
    once with any energy, once without the exact energy (oracle knowledge no model has)."""
    lines = []
    for name in dict.fromkeys(r["toyset"] for r in rows):
        without_exact = (" (no exact energy)", lambda r: "exact" not in (r["rescore"] or ""))
        for label, keep in (("", lambda r: True), without_exact):
            group = [r for r in rows if r["toyset"] == name and keep(r)]
            if group and group[0]["gen_length"] >= LONG:
                lines.append(_target_line(name + label, group))
    return lines


def meets(r: dict) -> bool:
    """Validity >= 99% and TV within 0.02 of the floor (conditional sets: validity only)."""
    close = r["tv"] is None or r["tv"] - r["tv_floor"] <= TARGET_TV_GAP
    return r["validity"] >= TARGET_VALIDITY and close


def _target_line(name: str, group: list[dict]) -> str:
    fast = [r for r in group if r["tokens_per_step"] >= TARGET_TOKENS_PER_STEP]
    hits = sorted((r for r in fast if meets(r)), key=lambda r: (-r["tokens_per_step"], r["rows_per_sample"]))
    if hits:
        r = hits[0]
        return (f"{name}: MET by {r['decoder']} at {r['tokens_per_step']:.2f} tokens/step "
                f"(validity {r['validity']:.3f}, tv {_gap(r)}; {r['steps_per_sample']:.1f} steps, "
                f"{r['rows_per_sample']:.0f} rows per sample)")
    best_fast = max(fast, key=lambda r: (r["validity"], -r["rows_per_sample"]), default=None)
    slower = sorted((r for r in group if meets(r)), key=lambda r: (-r["tokens_per_step"], r["rows_per_sample"]))
    text = f"{name}: MISSED."
    if best_fast is not None:
        text += (f" Best at >= 4 tokens/step: {best_fast['decoder']} at {best_fast['tokens_per_step']:.2f}, "
                 f"validity {best_fast['validity']:.3f} (tv {_gap(best_fast)}; "
                 f"{best_fast['rows_per_sample']:.0f} rows).")
    if slower:
        r = slower[0]
        text += (f" Fastest that meets validity and TV: {r['decoder']} at {r['tokens_per_step']:.2f} tokens/step "
                 f"({r['steps_per_sample']:.1f} steps, {r['rows_per_sample']:.0f} rows).")
    return text


def _gap(row: dict) -> str:
    return "n/a (conditional set)" if row["tv"] is None else f"{row['tv']:.3f} vs floor {row['tv_floor']:.3f}"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    toysets = [load_toyset(name) for name in args.toyset]
    if args.model:
        from jointobj.model.denoiser import Denoiser

        denoiser = Denoiser.from_pretrained(args.model).eval()
    rows = []
    for toyset in toysets:
        start = time.perf_counter()
        if not args.model:
            from jointobj.toysets.oracle import OracleDenoiser

            denoiser = OracleDenoiser(toyset)
        rows += [{"model": args.model or "oracle", "seed": args.seed, **row}
                 for row in sweep_set(denoiser, toyset, args)]
        print(f"{toyset.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        write_json(args.json, rows)  # after each set, so a long sweep leaves its partial results
    print(format_table(rows, COLUMNS))
    print(f"\ntarget: validity >= {TARGET_VALIDITY:.0%}, TV within {TARGET_TV_GAP} of the floor, >= "
          f"{TARGET_TOKENS_PER_STEP:g} tokens per sequential step (sets of >= {LONG} generated tokens)")
    print("\n".join(target(rows)) or "(no set of >= 8 generated tokens in this sweep)")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])

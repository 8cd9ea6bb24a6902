r"""Exact validity of state-determined decoders on a toy set, for several models side by side.

    python eval/exact_validity.py --models base=runs/base,fine-tuned=runs/logsum,TokenCE=runs/logsum/token_ce \
        --toyset latin_square_3 --json runs/exact_validity.json

For each model and decoder: the mass the decoder's exact law puts on the set's support (its validity
where the support is every valid answer, e.g. latin squares; a lower bound elsewhere:
jointobj/evaluation/exact_validity.py) and its NLL of the set's answers, with no sampling error. On a
set with one prompt the table also names the position(s) each decoder commits first and, for that
first state, its policy's score margin over the best position left out: a near-tie (a margin of a
few thousandths) is a decision a small fine-tune can flip, sending the decoder down another path.
`--first-cells` adds, for the one-token-per-step decoders, the mass with the first step forced to each
answer position in turn (the policy decides every later step): what each first choice would give.
"""

from __future__ import annotations

import argparse

import torch

from jointobj import Denoiser
from jointobj.decoding.decoder_law import DecoderOrder, decoder_blocks
from jointobj.evaluation.benchmark import write_measurements
from jointobj.evaluation.exact_validity import first_step, support_batch, support_mass
from jointobj.toysets.builtin import load_toyset

DECODERS = "confidence:tokens_per_step=1,confidence:tokens_per_step=2,threshold:threshold=0.9,l2r:tokens_per_step=1"


@torch.no_grad()
def mass_by_first_position(denoiser, toyset, decoder: str) -> list[float]:
    """Support mass of a one-token-per-step decoder with its first step forced to each answer position."""
    order = DecoderOrder.parse(decoder)
    policy = order.policy.for_denoiser(denoiser)
    batch = support_batch(toyset, 0, denoiser.device)
    masses = []
    for position in range(toyset.answer_length):
        def choose(logits, eligible, quota, live, position=position):
            if bool(eligible.all()):  # the first step: every position still open
                forced = torch.zeros_like(eligible)
                forced[:, position] = True
                return forced
            return policy.select(logits, eligible, quota)
        _, log_prob = decoder_blocks(denoiser, batch, ~batch["prompt_mask"], order, choose=choose)
        masses.append(float(log_prob.exp().sum()))
    return masses


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="comma-separated LABEL=DIR (or DIR) saved by Denoiser")
    parser.add_argument("--toyset", default="latin_square_3")
    parser.add_argument("--decoders", default=DECODERS, help="comma-separated state-determined decoders at budgets")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--first-cells", action="store_true",
                        help="one-token-per-step decoders: the mass with the first step forced to each position")
    args = parser.parse_args(argv)
    toyset = load_toyset(args.toyset)
    decoders = [name.strip() for name in args.decoders.split(",") if name.strip()]
    models = [item.split("=", 1) if "=" in item else (item, item) for item in args.models.split(",") if item]
    rows = []
    for label, directory in models:
        denoiser = Denoiser.from_pretrained(directory).eval()
        for row in support_mass(denoiser, toyset, decoders):
            if len(toyset.prompts) == 1:
                row["first_positions"], row["first_margin"] = first_step(denoiser, toyset, row["decoder"])
                if args.first_cells and len(row["first_positions"]) == 1:
                    row["mass_by_first_position"] = mass_by_first_position(denoiser, toyset, row["decoder"])
            rows.append({"model": label, **row})
    print(f"toy set {toyset.name}: exact mass on the support (= validity where the support is every valid "
          f"answer), NLL of its answers (nats; entropy {toyset.entropy():.3f}), the first step's positions and margin")
    width = max(len(row["decoder"]) for row in rows)
    print(f"{'model':<12} {'decoder':<{width}} {'mass':>6} {'nll':>6}  first step")
    for row in rows:
        first = f"{row['first_positions']} by {row['first_margin']:.4f}" if "first_positions" in row else "-"
        print(f"{row['model']:<12} {row['decoder']:<{width}} {row['mass']:>6.3f} {row['nll_nats']:>6.3f}  {first}")
        if "mass_by_first_position" in row:
            masses = row["mass_by_first_position"]
            print(f"{'':<12} {'  first step forced to 0..n-1':<{width}} " + " ".join(f"{m:.3f}" for m in masses)
                  + f"  mean {sum(masses) / len(masses):.3f}")
    write_measurements(args.json, rows, toyset=toyset.name)
    print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()

"""The learned draft head against marginal drafts: tokens per step, rows per token, head cost, wall time.

    python eval/draft_head.py --models runs/frontier_all --json runs/draft_head.json --plot runs/draft_head.png

For each set (latin_square_3, shuffle_8, latin_square_4, sudoku_4 by default) and each model -- the
exact oracle and the set's trained tiny model from eval/frontier_all.py (its GROUPS and
`trained_model`: pretrained into --models/GROUP, or reused from there) -- a draft head
(jointobj/model/draft_head.py, --width x --layers) is attached and distilled from the model's own
one-token-per-step l2r samples (jointobj/training/draft_head.py: --head-samples answers, --head-steps
Adam steps; the denoiser frozen). A trained model's head is saved with it in --models/GROUP-draft_head
and reused on later runs. Then, on the same --samples prompts at T = 1:

  l2r K=1                 the model's own one-token-per-step law (the validity reference)
  spec marginal N=1, N=4  the speculative decoder with independent marginal drafts (one, four drafts)
  spec marginal N=2       (two drafts; with N=1, N=4 the independent-draft baseline of the trees)
  spec marginal tree k    a draft tree of the marginals: k candidates per node drawn without replacement,
                          the k likeliest paths continued (jointobj/decoding/draft_tree.py; <= 1 + k (w - 1)
                          rows a round, as N = k independent drafts)
  spec head N=1, N=2, N=4 the same verifier with the head's joint drafts (independent draws of the head)
  spec head tree k        the head's draft tree, candidates sampled without replacement (k = 1, 2, 4)
  spec head topk k        the head's draft tree, candidates its k likeliest tokens (k = 1, 2, 4)

(--decoders picks rows by these labels)

each with validity (Wilson interval), tokens per sequential step (the first marginal forward
included), forward rows per token, and for the head its FLOPs per round per sample and per drafted
token (torch.utils.flop_counter around its prefill / step calls) against one denoiser row forward of
the trained model (the same counter; the oracle has no FLOPs of its own, so its head is compared
with the trained model's row). The target table: the trained model with its head at validity within
one standard error of its own l2r K=1 validity, <= 32 rows per token, head FLOPs per round <= 10% of
a row, and >= 4 (16-token sets) or >= 3 (9- and 8-token sets) tokens per step.

Part "wall" (trained models): l2r K=1, the confidence threshold at each --thresholds value,
speculative with marginal drafts and with the head (one draft each), timed per sample at batch 1
and 64 in one interleaved run (jointobj.evaluation.benchmark.time_decoders); "equal validity" is
the lowest threshold whose validity interval reaches the head decoder's validity.

Prints the tables, writes the JSON (jointobj.evaluation.benchmark.write_measurements) and the
frontier of every set (jointobj.evaluation.report.plot_frontier).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from jointobj.cli.progress import add_no_progress
from jointobj.decoding.registry import build_decoder
from jointobj.evaluation.benchmark import time_decoders, write_measurements
from jointobj.evaluation.metrics import wilson_interval
from jointobj.evaluation.report import format_table, plot_frontier
from jointobj.model.denoiser import Denoiser
from jointobj.model.draft_head import attach_draft_head, find_draft_head
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.training.draft_head import train_draft_head
from jointobj.utils.registry import split_names

SETS = ["latin_square_3", "shuffle_8", "latin_square_4", "sudoku_4"]
DECODERS = {"l2r K=1": ("l2r", {}),
            "spec marginal N=1": ("speculative", {"drafts": 1}),
            "spec marginal N=2": ("speculative", {"drafts": 2}),
            "spec marginal N=4": ("speculative", {"drafts": 4}),
            **{f"spec marginal tree k={k}": ("speculative", {"branches": k}) for k in (2, 4)},
            "spec head N=1": ("speculative", {"drafts": 1, "draft": "head"}),
            "spec head N=2": ("speculative", {"drafts": 2, "draft": "head"}),
            "spec head N=4": ("speculative", {"drafts": 4, "draft": "head"}),
            **{f"spec head tree k={k}": ("speculative", {"branches": k, "draft": "head"}) for k in (1, 2, 4)},
            **{f"spec head topk k={k}": ("speculative", {"branches": k, "branching": "topk", "draft": "head"})
               for k in (1, 2, 4)}}
HEAD_DECODERS = [label for label, (_, options) in DECODERS.items() if options.get("draft") == "head"]
RATE_COLUMNS = ["model", "toyset", "decoder", "validity", "validity_low", "validity_high", "tokens_per_step",
                "tokens_per_step_se", "rows_per_token", "head_flops_per_round", "head_over_row",
                "head_over_round_forward"]
HEAD_COLUMNS = ["model", "toyset", "head_parameters", "denoiser_parameters", "row_flops", "head_flops_per_token",
                "head_flops_per_round",
                "train_seconds", "kl_first", "kl_last", "acceptance_first", "acceptance_last"]
TARGET_COLUMNS = ["toyset", "decoder", "tokens_per_step", "goal", "validity", "l2r_validity", "within_1se",
                  "rows_per_token", "head_over_row", "met"]
WALL_COLUMNS = ["toyset", "setting", "batch", "validity", "tokens_per_step", "wall_ms_per_sample"]
EQUAL_COLUMNS = ["toyset", "batch", "threshold", "threshold_validity", "head_validity", "l2r_over_head",
                 "threshold_over_head", "marginal_over_head"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sets", type=split_names, default=SETS)
    parser.add_argument("--decoders", type=split_names, default=list(DECODERS),
                        help="which rows of the rate table (default all: independent drafts N = 1, 2, 4 and the "
                             "draft trees: 'tree' = branches sampled without replacement, 'topk' = the k likeliest)")
    parser.add_argument("--models", default="runs/frontier_all", help="frontier_all's --out: one folder per group")
    parser.add_argument("--model-steps", type=int, default=None,
                        help="pretraining steps of a model not yet in --models (default: its group's own)")
    parser.add_argument("--oracle-only", action="store_true", help="skip the trained models (and the wall part)")
    parser.add_argument("--samples", type=int, default=400, help="prompts per measurement")
    parser.add_argument("--width", type=int, default=16, help="the head's width (16 x 2 layers: its cost per round "
                                                               "stays under 10%% of one row of the tiny models)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-samples", type=int, default=1000, help="the model's own samples the head distils")
    parser.add_argument("--head-steps", type=int, default=400)
    parser.add_argument("--head-lr", type=float, default=3e-3)
    parser.add_argument("--retrain-heads", action="store_true", help="ignore heads saved in --models")
    parser.add_argument("--thresholds", type=lambda s: [float(t) for t in split_names(s)], default=[0.5, 0.7, 0.9])
    parser.add_argument("--batches", type=lambda s: [int(t) for t in split_names(s)], default=[1, 64])
    parser.add_argument("--wall-samples", type=int, default=64)
    parser.add_argument("--wall-sets", type=split_names, default=None,
                        help="sets timed (default: --sets; \"\" times none)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replot", nargs="+", default=None, metavar="JSON",
                        help="only draw --plot from the rate rows of these JSONs (a later file's (model, set) rows "
                             "replace an earlier one's) and exit")
    parser.add_argument("--json", default="runs/draft_head.json", metavar="FILE")
    parser.add_argument("--plot", default="runs/draft_head.png", metavar="PNG")
    add_no_progress(parser)
    return parser.parse_args(argv)


def _frontier_all():
    """eval/frontier_all.py as a module: its GROUPS and trained_model build and reuse the trained models."""
    spec = importlib.util.spec_from_file_location("frontier_all", Path(__file__).with_name("frontier_all.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _group_of(frontier_all, name: str) -> tuple[str, list[str], int, str]:
    for group, (members, steps, size) in frontier_all.GROUPS.items():
        if name in members:
            return group, members, steps, size
    raise ValueError(f"{name} is in none of eval/frontier_all.py's GROUPS")


def _vocab(denoiser, toyset) -> int:
    ids = torch.cat([toyset.prompts[:1], torch.full((1, toyset.answer_length), int(denoiser.mask_token_id))], 1)
    with torch.no_grad():
        return int(denoiser(input_ids=ids).shape[-1])


def _train_head(denoiser, toyset, args) -> dict[str, Any]:
    attach_draft_head(denoiser, vocab_size=_vocab(denoiser, toyset), max_positions=toyset.answer_length,
                      width=args.width, layers=args.layers, heads=args.heads)
    prompts, _ = toyset.sample(args.head_samples, torch.Generator().manual_seed(args.seed + 1))
    report = train_draft_head(denoiser, prompts, toyset.answer_length, steps=args.head_steps,
                              samples=args.head_samples, learning_rate=args.head_lr, seed=args.seed)
    (_, kl0, acc0), (_, kl1, acc1) = report["history"][0], report["history"][-1]
    return {"train_seconds": report["seconds"], "kl_first": kl0, "kl_last": kl1, "acceptance_first": acc0,
            "acceptance_last": acc1}


def models_for(name: str, args, frontier_all) -> dict[str, tuple[Any, dict]]:
    """{"oracle": (oracle with a trained head, its training record), "trained": (model with head, record)}."""
    toyset = load_toyset(name)
    oracle = OracleDenoiser(toyset)
    out = {"oracle": (oracle, _train_head(oracle, toyset, args))}
    if args.oracle_only:
        return out
    group, members, steps, size = _group_of(frontier_all, name)
    saved = Path(args.models) / f"{group}-draft_head"
    if (saved / "draft_head.safetensors").exists() and not args.retrain_heads:
        out["trained"] = (Denoiser.from_pretrained(str(saved)).eval(), {"train_seconds": "reused"})
        return out
    namespace = argparse.Namespace(out=args.models, learning_rate=3e-3, train_samples=2000, seed=args.seed)
    model = frontier_all.trained_model(group, members, args.model_steps or steps, size, namespace)
    record = _train_head(model, toyset, args)
    model.save_pretrained(str(saved))
    out["trained"] = (model, record)
    return out


class HeadFlops:
    """Counts the head's FLOPs (prefill and step calls) and the tokens it drafts, while active."""

    def __init__(self, head):
        self.head, self.flops, self.tokens, self.calls = head, 0, 0, 0

    def __enter__(self):
        self.saved = self.head.prefill, self.head.step

        def counted(method):
            def run(*args, **kwargs):
                with FlopCounterMode(display=False) as counter:
                    result = method(*args, **kwargs)
                self.flops += counter.get_total_flops()
                logits = result[0] if isinstance(result, tuple) else result
                self.tokens += logits.shape[0]
                self.calls += method is self.saved[0]
                return result
            return run

        self.head.prefill, self.head.step = counted(self.saved[0]), counted(self.saved[1])
        return self

    def __exit__(self, *exc):
        del self.head.prefill, self.head.step  # the class's methods again


def row_flops(denoiser, toyset) -> int:
    """FLOPs of one denoiser forward of one row (prompt + answer)."""
    ids = torch.cat([toyset.prompts[:1], torch.full((1, toyset.answer_length), int(denoiser.mask_token_id))], 1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        denoiser(input_ids=ids)
    return counter.get_total_flops()


def _rate_se(out, n: int) -> float:
    """Standard error of tokens per step = L / mean(steps of a sample), by the delta method."""
    steps = out.row_steps.double()
    return float(out.gen_length * steps.std() / math.sqrt(n) / steps.mean() ** 2) if n > 1 else float("nan")


def measure(decoder, denoiser, toyset, prompts: torch.Tensor, seed: int) -> dict[str, Any]:
    head = find_draft_head(denoiser) if getattr(decoder, "draft", "marginals") == "head" else None
    counter = HeadFlops(head) if head is not None else None
    if counter is not None:
        with counter:
            out = decoder.sample(denoiser, prompts, toyset.answer_length, torch.Generator().manual_seed(seed))
    else:
        out = decoder.sample(denoiser, prompts, toyset.answer_length, torch.Generator().manual_seed(seed))
    valid = int(toyset.is_valid(prompts, out.answer_ids).sum())
    low, high = wilson_interval(valid, len(prompts))
    row = {"validity": valid / len(prompts), "validity_low": low, "validity_high": high,
           "validity_se": math.sqrt(max(valid / len(prompts) * (1 - valid / len(prompts)), 1e-12) / len(prompts)),
           "tokens_per_step": out.tokens_per_step, "tokens_per_step_se": _rate_se(out, len(prompts)),
           "rows_per_sample": out.rows_per_sample,
           "rows_per_token": out.rows_per_sample / toyset.answer_length, "gen_length": toyset.answer_length,
           "steps_per_sample": out.steps_per_sample}
    if counter is not None:
        rounds = float((out.row_steps - 1).sum())  # every step after the first marginal forward is a round
        row.update({"head_flops_per_round": counter.flops / max(rounds, 1),
                    "head_flops_per_drafted_token": counter.flops / max(counter.tokens, 1),
                    "verify_rows_per_round": (out.rows_per_sample * len(prompts) - len(prompts)) / max(rounds, 1)})
    return row


def rate_rows(name: str, models: dict, args, reference_flops: int | None) -> list[dict]:
    toyset = load_toyset(name)
    prompts, _ = toyset.sample(args.samples, torch.Generator().manual_seed(args.seed))
    rows = []
    for model_name, (denoiser, _) in models.items():
        for label in args.decoders:
            decoder_name, options = DECODERS[label]
            decoder = build_decoder(decoder_name, 1 if decoder_name == "l2r" else None, temperature=1.0, **options)
            row = {"part": "rate", "model": model_name, "toyset": name, "decoder": label,
                   **measure(decoder, denoiser, toyset, prompts, args.seed)}
            if "head_flops_per_round" in row and reference_flops:  # against one row, and the round's whole forward
                row["head_over_row"] = row["head_flops_per_round"] / reference_flops
                row["head_over_round_forward"] = row["head_over_row"] / max(row["verify_rows_per_round"], 1e-9)
            rows.append(row)
            print(format_table([row], RATE_COLUMNS), flush=True)
    return rows


def target_rows(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["toyset"] for r in rows):
        mine = {r["decoder"]: r for r in rows if r["toyset"] == name and r["model"] == "trained"}
        if "l2r K=1" not in mine:
            continue
        reference = mine["l2r K=1"]
        goal = 4.0 if reference["gen_length"] >= 16 else 3.0
        for label in [label for label in HEAD_DECODERS if label in mine]:
            row = mine[label]
            se = reference["validity_se"]
            within = abs(row["validity"] - reference["validity"]) <= math.hypot(se, row["validity_se"])
            met = (row["tokens_per_step"] >= goal and within and row["rows_per_token"] <= 32
                   and row.get("head_over_row", 1.0) <= 0.10)
            out.append({"toyset": name, "decoder": label, "tokens_per_step": row["tokens_per_step"], "goal": goal,
                        "validity": row["validity"], "l2r_validity": reference["validity"], "within_1se": within,
                        "rows_per_token": row["rows_per_token"], "head_over_row": row.get("head_over_row"),
                        "met": met})
    return out


def wall_rows(name: str, denoiser, args) -> tuple[list[dict], list[dict]]:
    toyset = load_toyset(name)
    prompts, _ = toyset.sample(max(args.samples, args.wall_samples), torch.Generator().manual_seed(args.seed))
    settings = {"l2r K=1": build_decoder("l2r", 1, temperature=1.0),
                "spec marginal N=1": build_decoder("speculative", temperature=1.0),
                "spec head N=1": build_decoder("speculative", temperature=1.0, draft="head")}
    settings.update({f"threshold {t}": build_decoder("threshold", 1, threshold=t, temperature=1.0)
                     for t in args.thresholds})
    quality = {label: measure(d, denoiser, toyset, prompts[: args.samples], args.seed) for label, d in settings.items()}
    timed = prompts[: args.wall_samples]
    rows, equal = [], []
    for batch in args.batches:
        seconds = time_decoders(settings, denoiser, timed, toyset.answer_length, batch, args.seed, args.repeats)
        for label in settings:
            rows.append({"part": "wall", "model": "trained", "toyset": name, "setting": label, "batch": batch,
                         **quality[label], "wall_ms_per_sample": 1000 * seconds[label] / len(timed)})
        target = quality["spec head N=1"]["validity"]
        reaching = [t for t in args.thresholds if quality[f"threshold {t}"]["validity_high"] >= target]
        t = min(reaching) if reaching else max(args.thresholds)
        equal.append({"part": "equal_validity", "toyset": name, "batch": batch, "threshold": t,
                      "threshold_validity": quality[f"threshold {t}"]["validity"], "head_validity": target,
                      "threshold_reaches": bool(reaching),
                      "l2r_over_head": seconds["l2r K=1"] / seconds["spec head N=1"],
                      "threshold_over_head": seconds[f"threshold {t}"] / seconds["spec head N=1"],
                      "marginal_over_head": seconds["spec marginal N=1"] / seconds["spec head N=1"]})
    return rows, equal


def replot(paths: list[str], plot: str) -> list[dict]:
    """The frontier of several runs' rate rows on one picture; later files win for a (model, set)."""
    import json

    rows: dict[tuple[str, str], list[dict]] = {}
    for path in paths:
        found: dict[tuple[str, str], list[dict]] = {}
        for row in json.loads(Path(path).read_text())["rows"]:
            if row["part"] == "rate":
                found.setdefault((row["model"], row["toyset"]), []).append(row)
        rows.update(found)
    flat = [row for group in rows.values() for row in group]
    plot_frontier(flat, plot)
    print(f"wrote {plot} from {len(flat)} rows")
    return flat


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    unknown = [label for label in args.decoders if label not in DECODERS]
    if unknown:
        raise SystemExit(f"unknown --decoders {unknown}; use labels from: {', '.join(DECODERS)}")
    if args.replot:
        return replot(args.replot, args.plot)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    frontier_all = _frontier_all()
    rate, heads, wall, equal = [], [], [], []
    for name in args.sets:
        models = models_for(name, args, frontier_all)
        toyset = load_toyset(name)
        reference = row_flops(models["trained"][0], toyset) if "trained" in models else None
        measured = rate_rows(name, models, args, reference)
        for model_name, (denoiser, record) in models.items():
            head = find_draft_head(denoiser)
            drafted = next((r for r in measured if r["model"] == model_name and r["decoder"] in HEAD_DECODERS), None)
            if drafted is None:
                continue
            heads.append({"part": "head", "model": model_name, "toyset": name,
                          "head_parameters": sum(p.numel() for p in head.parameters()),
                          "denoiser_parameters": (sum(p.numel() for p in denoiser.parameters())
                                                  - sum(p.numel() for p in head.parameters())),
                          "row_flops": reference if model_name == "oracle" else row_flops(denoiser, toyset),
                          "head_flops_per_token": drafted["head_flops_per_drafted_token"],
                          "head_flops_per_round": drafted["head_flops_per_round"], **record})
        rate += measured
        if "trained" in models and name in (args.sets if args.wall_sets is None else args.wall_sets):
            w, e = wall_rows(name, models["trained"][0], args)
            wall, equal = wall + w, equal + e
        write_measurements(args.json, rate + heads + wall + equal, command_args=vars(args))  # a killed run keeps it
    print(format_table(rate, RATE_COLUMNS))
    print()
    print(format_table(heads, HEAD_COLUMNS))
    status = target_rows(rate)
    if status:
        print("\ntarget (trained models with their heads)")
        print(format_table(status, TARGET_COLUMNS))
    if wall:
        print()
        print(format_table(wall, WALL_COLUMNS))
        print()
        print(format_table(equal, EQUAL_COLUMNS))
    write_measurements(args.json, rate + heads + wall + equal, command_args=vars(args), target=status,
                       total_s=time.perf_counter() - start)
    plot_frontier(rate, args.plot)
    print(f"\nwrote {args.json} and {args.plot}")
    return rate + heads + wall + equal


if __name__ == "__main__":
    main()

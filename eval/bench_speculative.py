"""Speculative decoding: tokens per step against drafts N and window w, and wall time per sample
against the confidence-threshold decoder at equal validity, batch 1 and batch 64 side by side.

    python eval/bench_speculative.py --json out/bench_speculative.json                    # oracle only
    python eval/bench_speculative.py --train-base runs/spec_base --json out/bench_speculative.json

Part "rate": for each model (the exact oracle; a trained tiny model with --model DIR, or one
pretrained here with --train-base DIR, reused on later runs) and toy set, the speculative
decoder (l2r, T = --temperature) at every window w and draft count N: validity with its
Wilson interval, coverage (mass of the support seen) beside exact sampling's at the same count
(`coverage_exact`; both '-' on conditional sets), tokens per sequential step, forward rows per
generated token.

Part "revisable": revisable commits (check_rows 1 and 2) beside the threshold decoder at the
same commit threshold, on the same sets and models: validity, steps and rows per token.

Part "wall": on --wall-sets with the trained model (the oracle when there is none), the
speculative decoder beside the one-token-per-step l2r decoder (the same law) and the
confidence-threshold decoder at each --thresholds value, each timed per sample at every
--batches size in one interleaved run (jointobj.evaluation.benchmark.time_decoders). Validity is
measured once per setting on --samples prompts. "Equal validity" picks, per set, the lowest
threshold whose validity interval reaches the speculative decoder's validity; the table then
gives the wall-time ratio threshold / speculative at each batch size.

Prints the tables and writes the JSON (jointobj.evaluation.benchmark.write_measurements).
"""

from __future__ import annotations

import argparse
import time

import torch

from jointobj.decoding.registry import build_decoder
from jointobj.evaluation.benchmark import time_decoders, write_measurements
from jointobj.evaluation.metrics import coverage, expected_coverage, wilson_interval
from jointobj.evaluation.report import format_table
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.utils.registry import split_names

RATE_COLUMNS = ["model", "toyset", "draft_length", "drafts", "validity", "validity_low", "coverage", "coverage_exact",
                "tokens_per_step", "rows_per_token"]
WALL_COLUMNS = ["model", "toyset", "decoder", "setting", "validity", "validity_low", "validity_high", "coverage",
                "coverage_exact", "tokens_per_step", "rows_per_token", "batch", "wall_ms_per_sample"]
REVISABLE_COLUMNS = ["model", "toyset", "decoder", "threshold", "check_rows", "validity", "validity_low", "coverage",
                     "coverage_exact", "tokens_per_step", "steps_per_sample", "rows_per_token"]
EQUAL_COLUMNS = ["model", "toyset", "batch", "threshold", "threshold_validity", "speculative_validity",
                 "threshold_ms", "speculative_ms", "threshold_over_speculative"]


def _windows(text: str) -> list[int | None]:
    return [None if t == "all" else int(t) for t in split_names(text)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sets", type=split_names,
                        default=split_names("likes_tennis,agreement,shuffle_4,latin_square_3"),
                        help="toy sets of the rate part (the trained model must know them)")
    parser.add_argument("--oracle-sets", type=split_names, default=split_names("latin_square_4,sudoku_4,shuffle_8"),
                        help="more sets of the rate part, for the oracle only (8 or more answer tokens)")
    parser.add_argument("--drafts", type=lambda s: [int(t) for t in split_names(s)], default=[1, 2, 4, 8])
    parser.add_argument("--draft-lengths", type=_windows, default=[2, 4, None], help="w values; 'all' = the rest")
    parser.add_argument("--samples", type=int, default=400, help="prompts per validity measurement")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--model", default=None, help="a saved Denoiser directory (trained on the sets)")
    parser.add_argument("--train-base", default=None, metavar="DIR",
                        help="pretrain the embedded tiny base on --train-sets into DIR (or reuse it)")
    parser.add_argument("--train-sets", default="likes_tennis,agreement,shuffle_4,latin_square_3")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--train-lr", type=float, default=3e-3)
    parser.add_argument("--revisable-thresholds", type=lambda s: [float(t) for t in split_names(s)],
                        default=[0.1, 0.3, 0.5], help="part 'revisable': its commit thresholds (and the threshold "
                                                       "decoder's, at equal forwards)")
    parser.add_argument("--wall-sets", type=split_names, default=split_names("agreement,shuffle_4"))
    parser.add_argument("--thresholds", type=lambda s: [float(t) for t in split_names(s)], default=[0.2, 0.3, 0.5, 0.9])
    parser.add_argument("--batches", type=lambda s: [int(t) for t in split_names(s)], default=[1, 64])
    parser.add_argument("--wall-samples", type=int, default=64, help="samples timed per setting and batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench_speculative.json", metavar="FILE")
    return parser.parse_args(argv)


def _trained_model(args: argparse.Namespace):
    from jointobj.model.denoiser import Denoiser

    directory = args.model
    if directory is None and args.train_base is not None:
        from jointobj.training.embedded import ensure_base

        directory = ensure_base(args.train_base, args.train_sets, steps=args.train_steps, learning_rate=args.train_lr,
                                samples_per_toyset=2000, seed=args.seed)
    return None if directory is None else Denoiser.from_pretrained(str(directory)).eval()


def _measure(decoder, denoiser, toyset, prompts: torch.Tensor, seed: int) -> dict:
    """Validity (Wilson interval), coverage beside exact sampling's at the same count (None for conditional
    sets), tokens per step and rows per token of one decoder on `prompts`."""
    out = decoder.sample(denoiser, prompts, toyset.answer_length, torch.Generator().manual_seed(seed))
    valid = int(toyset.is_valid(prompts, out.answer_ids).sum())
    low, high = wilson_interval(valid, len(prompts))
    return {"validity": valid / len(prompts), "validity_low": low, "validity_high": high,
            "coverage": coverage(toyset, out.answer_ids), "coverage_exact": expected_coverage(toyset, len(prompts)),
            "tokens_per_step": out.tokens_per_step, "rows_per_token": out.rows_per_sample / toyset.answer_length,
            "steps_per_sample": out.steps_per_sample}


def _cells(models: dict, args: argparse.Namespace):
    """(model name, set name, toy set, its prompts, the denoiser) for every model and set it is measured on:
    the oracle (a None model) on args.sets and args.oracle_sets, trained models on args.sets."""
    for model_name, denoiser in models.items():
        for name in args.sets + (args.oracle_sets if denoiser is None else []):
            toyset = load_toyset(name)
            prompts, _ = toyset.sample(args.samples, torch.Generator().manual_seed(args.seed))
            yield model_name, name, toyset, prompts, OracleDenoiser(toyset) if denoiser is None else denoiser


def rate_rows(models: dict, args: argparse.Namespace) -> list[dict]:
    rows = []
    for model_name, name, toyset, prompts, model in _cells(models, args):
        for w in args.draft_lengths:
            for n in args.drafts:
                decoder = build_decoder("speculative", draft_length=w, drafts=n, temperature=args.temperature)
                rows.append({"part": "rate", "model": model_name, "toyset": name,
                             "draft_length": "all" if w is None else w, "drafts": n,
                             **_measure(decoder, model, toyset, prompts, args.seed)})
    return rows


def revisable_rows(models: dict, args: argparse.Namespace) -> list[dict]:
    """Revisable commits beside the threshold decoder at the same commit threshold: what the check rows buy."""
    rows = []
    for model_name, name, toyset, prompts, model in _cells(models, args):
        for t in args.revisable_thresholds:
            settings = [("threshold", None, build_decoder("threshold", 1, threshold=t, temperature=args.temperature))]
            settings += [("revisable", r, build_decoder("revisable", threshold=t, check_rows=r,
                                                         temperature=args.temperature)) for r in (1, 2)]
            for label, check_rows, decoder in settings:
                rows.append({"part": "revisable", "model": model_name, "toyset": name, "decoder": label,
                             "threshold": t, "check_rows": check_rows,
                             **_measure(decoder, model, toyset, prompts, args.seed)})
    return rows


def wall_rows(model_name: str, denoiser, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    rows, equal = [], []
    for name in args.wall_sets:
        toyset = load_toyset(name)
        model = OracleDenoiser(toyset) if denoiser is None else denoiser
        prompts, _ = toyset.sample(max(args.samples, args.wall_samples), torch.Generator().manual_seed(args.seed))
        settings = {"speculative N=1": build_decoder("speculative", temperature=args.temperature),
                    "speculative N=4": build_decoder("speculative", drafts=4, temperature=args.temperature),
                    "l2r K=1": build_decoder("l2r", 1, temperature=args.temperature)}
        settings.update({f"threshold {t}": build_decoder("threshold", 1, threshold=t, temperature=args.temperature)
                         for t in args.thresholds})
        measured = prompts[: args.samples]
        quality = {label: _measure(d, model, toyset, measured, args.seed) for label, d in settings.items()}
        timed = prompts[: args.wall_samples]
        for batch in args.batches:
            seconds = time_decoders(settings, model, timed, toyset.answer_length, batch, args.seed, args.repeats)
            for label, decoder in settings.items():
                rows.append({"part": "wall", "model": model_name, "toyset": name, "decoder": decoder.name,
                             "setting": label, "batch": batch, **quality[label],
                             "wall_ms_per_sample": 1000 * seconds[label] / len(timed)})
            target = quality["speculative N=1"]["validity"]
            reaching = [t for t in args.thresholds if quality[f"threshold {t}"]["validity_high"] >= target]
            if reaching:
                t = min(reaching)
                equal.append({"part": "equal_validity", "model": model_name, "toyset": name, "batch": batch,
                              "threshold": t, "threshold_validity": quality[f"threshold {t}"]["validity"],
                              "speculative_validity": target,
                              "threshold_ms": 1000 * seconds[f"threshold {t}"] / len(timed),
                              "speculative_ms": 1000 * seconds["speculative N=1"] / len(timed),
                              "threshold_over_speculative": seconds[f"threshold {t}"] / seconds["speculative N=1"]})
    return rows, equal


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    trained = _trained_model(args)
    models = {"oracle": None, **({"trained": trained} if trained is not None else {})}
    rate = rate_rows(models, args)
    print(format_table(rate, RATE_COLUMNS))
    revisable = revisable_rows(models, args)
    print()
    print(format_table(revisable, REVISABLE_COLUMNS))
    wall_model = "trained" if trained is not None else "oracle"
    wall, equal = wall_rows(wall_model, trained, args)
    print()
    print(format_table(wall, WALL_COLUMNS))
    print()
    print(format_table(equal, EQUAL_COLUMNS))
    rows = rate + revisable + wall + equal
    write_measurements(args.json, rows, command_args=vars(args), total_s=time.perf_counter() - start)
    return rows


if __name__ == "__main__":
    main()

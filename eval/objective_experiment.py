"""Train what you decode, at equal wall-clock: fine-tune a per-token base for a decoder and budget.

    python eval/objective_experiment.py --toyset agreement,latin_square_3 --base-steps 800 --steps 150 \\
        --train-for "confidence:steps=2,entropy_bounded:bound=0.5:steps=2" --json runs/objective_experiment.json

For each toy set a tiny ModernBERT (the set's own tokenizer) is pretrained from scratch with the
per-token CE (`--base-steps`; reused from --out on later runs): the per-token base a user
fine-tunes, as the recipe does. From it, full-parameter fine-tunes with the same data, batch, seed
and learning rate:

- law[D]      0.5 TokenCE + 0.5 the decoder-order likelihood of decoder D at its budget (`--train-for`,
              one model per entry; jointobj/decoding/decoder_law.py: exactly log P_D(answer));
- logsum_kK   0.5 TokenCE + 0.5 the fixed-order log-sum {l2r, r2l, random, random} at K blocks
              (`--blocks`, 0 to skip), the earlier way of training at a budget;
- token_ce    TokenCE continued for as many wall-clock seconds as the slowest of the above took
              (its steps and seconds are printed: equal compute, not equal steps).

With `--plan N`, an order is also planned on the base for each budget (jointobj.decoding.decoder_law.plan_order:
of l2r, r2l and N random permutations, the one whose decoder law gives the set's answers the highest
likelihood at that budget) and every model is decoded with it too (`planned`); `--train-planned`
adds a fine-tune law[planned] for each planned budget of `--train-planned`.

Every model (base, fine-tunes, and the exact oracle) is then decoded at T = 1 at one token per step
(l2r) and at 2 and 3 steps per answer with confidence, l2r, threshold (0.9) and entropy_bounded
(0.1 nats and `--bound`): validity with its standard error, coverage beside what exact sampling
covers, and the decoder's own NLL of the set's answers (nats; exact for these decoders). Prints
the training table and one validity table per set; writes every row to the JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from jointobj import Denoiser
from jointobj.cli.progress import add_no_progress
from jointobj.decoding.decoder_law import DecoderOrder, parse_decoder_orders, plan_order
from jointobj.diffusion.batch import answer_batch
from jointobj.evaluation.benchmark import write_measurements
from jointobj.evaluation.frontier import SweepPoint
from jointobj.evaluation.report import format_table
from jointobj.evaluation.sweep import evaluate
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.training.recipe import run_recipe

FIXED_ORDERS = ["l2r", "r2l", "random", "random"]
BUDGET_DECODERS = ("confidence", "l2r", "threshold", "entropy_bounded")


class Clock(TrainerCallback):
    """Training seconds (first to last step), and a stop once `limit` seconds have passed."""

    def __init__(self, limit: float | None = None):
        self.limit, self.start, self.seconds = limit, None, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start
        if self.limit is not None and self.seconds >= self.limit:
            control.should_training_stop = True


def objectives(train_for: list[DecoderOrder], blocks: int, token_ce_weight: float) -> dict[str, tuple[str, dict]]:
    """Name -> (objective, kwargs) of each fine-tune compared (token_ce continued is added by main)."""
    compared = {f"law[{order}]": ("mixture", {"token_ce_weight": token_ce_weight,
                                             "logsum": {"orders": [str(order)], "max_rows": 1024}})
                for order in train_for}
    if blocks:
        compared[f"logsum_k{blocks}"] = ("mixture", {"token_ce_weight": token_ce_weight, "logsum": {
            "orders": FIXED_ORDERS, "blocks": blocks, "mode": "sampled", "max_rows": 1024}})
    return compared


def decode_points(bound: float) -> list[SweepPoint]:
    """l2r at one token per step, then each budget decoder at 2 and 3 steps per answer."""
    points = [SweepPoint("l2r", 1)]
    for steps in (2, 3):
        for name in BUDGET_DECODERS:
            for extra in {"entropy_bounded": [(), (("bound", bound),)]}.get(name, [()]):
                options = tuple(sorted((*extra, ("steps", steps))))
                points.append(SweepPoint(name, None, options, ("steps", *dict(extra))))
    return points


def planned_orders(base: Denoiser, toyset, budgets: list[int], candidates: int, seed: int) -> dict[int, DecoderOrder]:
    """The order planned on the base for each budget (steps per answer), from 256 of the set's examples."""
    prompts, answers = toyset.sample(256, torch.Generator().manual_seed(seed + 1))  # [256, lp], [256, la]
    batch = answer_batch(prompts, answers)
    return {steps: plan_order(base, batch, steps=steps, candidates=candidates,
                              generator=torch.Generator().manual_seed(seed))[0] for steps in budgets}


def fresh_model(directory: Path, toyset, args: argparse.Namespace) -> Path:
    model = tiny_masked_lm("modernbert", vocab_size=len(toyset.tokenizer), hidden_size=args.hidden_size,
                           num_layers=args.num_layers, max_positions=max(8, toyset.length), seed=args.seed)
    Denoiser(model, tokenizer=toyset.tokenizer).save_pretrained(directory)
    return directory


def train(start: Path, toyset: str, out: Path, objective: str, kwargs: dict, steps: int, learning_rate: float,
          args: argparse.Namespace, seconds: float | None = None) -> tuple[Denoiser, dict]:
    clock = Clock(seconds)
    flags = ["--model_name_or_path", str(start), "--lora_r", "0", "--dataset", toyset, "--samples_per_toyset", "4096",
             "--max_steps", str(steps), "--per_device_train_batch_size", "64", "--learning_rate", str(learning_rate),
             "--lr_scheduler_type", "constant", "--deepspeed", "", "--output_dir", str(out), "--save_strategy", "no",
             "--report_samples", "0", "--logging_steps", str(max(1, steps // 4)), "--disable_tqdm", "true",
             "--seed", str(args.seed), "--report_to", "none", "--overwrite_output_dir", "true",
             "--objective", objective, "--objective_kwargs", json.dumps(kwargs)]
    result = run_recipe(flags, callbacks=[clock])
    return result.denoiser.eval(), {"steps": result.trainer.state.global_step, "train_s": round(clock.seconds, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toyset", default="agreement,latin_square_3")
    parser.add_argument("--train-for", default="confidence:steps=2",
                        help="comma-separated decoders at their budgets, one fine-tune each (decoder_law specs)")
    parser.add_argument("--blocks", type=int, default=2, help="K of the fixed-order log-sum fine-tune (0: skip it)")
    parser.add_argument("--token-ce-weight", type=float, default=0.5)
    parser.add_argument("--base-steps", type=int, default=800, help="TokenCE steps of the per-token base")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps of each compared objective")
    parser.add_argument("--base-learning-rate", type=float, default=3e-3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--bound", type=float, default=0.5, help="a second entropy_bounded bound (nats) to decode with")
    parser.add_argument("--plan", type=int, default=0, help="random candidate orders of the planned decoder (0: none)")
    parser.add_argument("--train-planned", default="", help="comma-separated budgets (steps per answer) at which to "
                        "fine-tune law[planned], e.g. 2,3 (needs --plan)")
    parser.add_argument("--samples", type=int, default=400, help="samples per decoder setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/objective_experiment")
    parser.add_argument("--json", default="runs/objective_experiment.json")
    add_no_progress(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    compared = objectives(parse_decoder_orders(args.train_for), args.blocks, args.token_ce_weight)
    points = decode_points(args.bound)

    train_rows, rows = [], []
    for name in args.toyset.split(","):
        toyset = load_toyset(name)
        root = Path(args.out) / name
        base = root / "base"
        if not (base / "jointobj.json").exists():  # the per-token base, reused on later runs
            init = fresh_model(root / "init", toyset, args)
            _, record = train(init, name, root / "base.staging", "token_ce", {}, args.base_steps,
                              args.base_learning_rate, args)
            shutil.rmtree(base, ignore_errors=True)
            (root / "base.staging").rename(base)
            train_rows.append({"toyset": name, "model": "base", **record})
        models = {"oracle": OracleDenoiser(toyset), "base": Denoiser.from_pretrained(base).eval()}
        planned = planned_orders(models["base"], toyset, [2, 3], args.plan, args.seed) if args.plan else {}
        set_points = points + [SweepPoint("planned", None, tuple(sorted(o.decoder_options.items())), ("steps",))
                               for o in planned.values()]
        for steps, order in planned.items():
            print(f"{name}: order planned on the base at {steps} steps: {order}", flush=True)
            train_rows.append({"toyset": name, "model": f"plan at {steps} steps", "order": str(order)})
        trained = [planned[int(s)] for s in args.train_planned.split(",") if s.strip()]
        set_compared = {**compared, **objectives(trained, 0, args.token_ce_weight)}
        longest = 0.0
        for label, (objective, kwargs) in set_compared.items():
            models[label], record = train(base, name, root / label, objective, kwargs, args.steps, args.learning_rate,
                                          args)
            longest = max(longest, record["train_s"])
            train_rows.append({"toyset": name, "model": label, **record})
        models["token_ce"], record = train(base, name, root / "token_ce", "token_ce", {}, 10**6, args.learning_rate,
                                           args, seconds=longest)
        train_rows.append({"toyset": name, "model": "token_ce (same seconds)", **record})
        for label, denoiser in models.items():
            for row in evaluate(denoiser, [toyset], points=set_points, samples=args.samples, seed=args.seed,
                                decoder_nll=True):
                rows.append({"model": label, "setting": setting(row), **row})
        write_measurements(args.json, train_rows + rows, config=vars(args))  # a killed run keeps what it has
        print(format_table([r for r in train_rows if r["toyset"] == name], ["toyset", "model", "steps", "train_s"]))
        print(comparison_table([r for r in rows if r["toyset"] == toyset.name], list(models)))
    write_measurements(args.json, train_rows + rows, config=vars(args))
    print(f"wrote {args.json}")
    return train_rows + rows


def tables(path: str) -> None:
    """Print the tables of a JSON this script wrote: `python -c 'import ...; tables("runs/x.json")'`."""
    data = json.loads(Path(path).read_text())
    rows = [r for r in data["rows"] if "validity" in r]
    for name in dict.fromkeys(r["toyset"] for r in rows):
        mine = [r for r in rows if r["toyset"] == name]
        print(comparison_table(mine, list(dict.fromkeys(r["model"] for r in mine))))


def setting(row: dict) -> str:
    knobs = " ".join(f"{k}={v}" for k, v in row["options"].items() if k != "order")
    return f"{row['decoder']} {knobs or 'K=1'}"


def comparison_table(rows: list[dict], models: list[str]) -> str:
    """One line per decoder setting: each model's validity ± se, coverage / exact, and decoder NLL."""
    lines: dict[str, dict] = {}
    for row in rows:
        line = lines.setdefault(row["setting"], {"setting": row["setting"], "H": row["entropy_nats"]})
        nll = "-" if row["decoder_nll"] is None else f"{row['decoder_nll']:.2f}"
        cover = "" if row["coverage"] is None else f" cov {row['coverage']:.2f}/{row['coverage_exact']:.2f}"
        line[row["model"]] = f"{row['validity']:.3f}±{row['validity_se']:.3f}{cover} nll {nll}"
    return format_table(list(lines.values()), ["setting", *models, "H"])


if __name__ == "__main__":
    main()

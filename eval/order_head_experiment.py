"""A learned decoding order against confidence, a planned order and the oracle, at equal wall-clock.

    python eval/order_head_experiment.py --toyset latin_square_3:3,agreement:3,eval.sets.train_for_sets:key_values:2 \\
        --json runs/order_head_experiment.json

Each entry is SET:STEPS (the decoder's budget in steps per answer). Per set, with the per-token base of
eval/objective_experiment.py (a tiny ModernBERT with the set's own tokenizer, `--base-steps` of TokenCE;
reused from --out):

- head       an order head (jointobj/model/order_head.py) trained on the frozen base by the score-function
             gradient of the decoder law's likelihood at that budget (jointobj/training/order_head.py),
             decoded with `learned`;
- law        with `--law-steps` > 0: the base with its trained head, fine-tuned with 0.5 TokenCE + 0.5 the
             decoder-order likelihood of `learned` at that budget (the denoiser trained for its learned order);
- planned_law with `--law-planned`: the base fine-tuned the same way for the order planned on it (`planned`),
             the state-independent alternative to learning the order;
- token_ce   TokenCE continued for as many seconds as the head (and the law fine-tune) took;
- oracle     the exact oracle, with its own order head trained the same way.

Every model is decoded at T = 1 at the budget with confidence, l2r, the order planned on the base
(`--plan` candidates; jointobj.decoding.decoder_law.plan_order; the oracle plans its own) and learned
(models with a head): validity ± se, coverage / exact, decoder NLL (eval/objective_experiment.py's
table). Prints the training table and one table per set; writes every row to the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import time
from pathlib import Path

import torch

from jointobj import Denoiser
from jointobj.cli.progress import add_no_progress
from jointobj.evaluation.benchmark import write_measurements
from jointobj.evaluation.frontier import SweepPoint
from jointobj.evaluation.report import format_table
from jointobj.evaluation.sweep import evaluate
from jointobj.model.order_head import OrderHead, attach_order_head
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.training.order_head import train_order_head


def _objective_experiment():
    """The sibling script eval/objective_experiment.py (its base, training, planning and table), as a module."""
    path = Path(__file__).with_name("objective_experiment.py")
    spec = importlib.util.spec_from_file_location("objective_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shared = _objective_experiment()


def points(steps: int, planned, learned: bool) -> list[SweepPoint]:
    """confidence, l2r, planned (when given) and learned (models with a head) at `steps` per answer."""
    chosen = [SweepPoint("confidence", None, (("steps", steps),)), SweepPoint("l2r", None, (("steps", steps),))]
    if planned is not None:
        chosen.append(SweepPoint("planned", None, tuple(sorted(planned.decoder_options.items()))))
    if learned:
        chosen.append(SweepPoint("learned", None, (("steps", steps),)))
    return chosen


def fit_head(denoiser, toyset, steps: int, args: argparse.Namespace, seconds: float | None = None) -> dict:
    """Attach an order head to `denoiser` (the oracle: as a plain submodule) and train it; returns its record."""
    prompts, answers = toyset.sample(4096, torch.Generator().manual_seed(args.seed + 2))
    torch.manual_seed(args.seed)  # the head's initial weights: the same whatever ran before (a reused base or not)
    if isinstance(denoiser, OracleDenoiser):
        denoiser.order_head = OrderHead(denoiser.vocab_size, toyset.answer_length, args.width)
    else:
        attach_order_head(denoiser, max_length=toyset.answer_length, width=args.width)
    report = train_order_head(denoiser, prompts, answers, f"learned:steps={steps}", steps=args.head_steps,
                              batch=args.head_batch, samples=args.head_samples, learning_rate=args.head_learning_rate,
                              seed=args.seed, seconds=seconds)
    first, last = report["history"][0][1], report["history"][-1][1]
    return {"steps": report["steps"], "train_s": report["seconds"], "reward_first": round(first, 3),
            "reward_last": round(last, 3)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toyset", default="latin_square_3:3,agreement:3,eval.sets.train_for_sets:key_values:2",
                        help="comma-separated SET:STEPS (a set by name or import reference, its budget)")
    parser.add_argument("--base-steps", type=int, default=800, help="TokenCE steps of the per-token base")
    parser.add_argument("--base-learning-rate", type=float, default=3e-3)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="of TokenCE continued and the law fine-tune")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=32, help="order head width")
    parser.add_argument("--head-steps", type=int, default=150)
    parser.add_argument("--head-batch", type=int, default=32)
    parser.add_argument("--head-samples", type=int, default=8, help="Plackett-Luce orders per answer")
    parser.add_argument("--head-learning-rate", type=float, default=1e-2)
    parser.add_argument("--law-steps", type=int, default=0, help="fine-tune the base for its learned order (0: skip)")
    parser.add_argument("--law-planned", action="store_true", help="also fine-tune the base for its planned order "
                        "(--law-steps steps)")
    parser.add_argument("--oracle-only", action="store_true", help="only the oracle: its own plan and order head "
                        "(what any order can reach at the budget; no base is trained)")
    parser.add_argument("--plan", type=int, default=32, help="random candidate orders of the planned decoder")
    parser.add_argument("--samples", type=int, default=1000, help="samples per decoder setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/order_head_experiment")
    parser.add_argument("--json", default="runs/order_head_experiment.json")
    add_no_progress(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    train_rows, rows = [], []
    for entry in args.toyset.split(","):
        name, _, budget = entry.rpartition(":")
        steps = int(budget)
        toyset = load_toyset(name)
        root = Path(args.out) / toyset.name
        base, work = root / "base", root / f"steps_{steps}"  # the base is shared by a set's budgets
        oracle = OracleDenoiser(toyset)
        first, first_trained = len(rows), len(train_rows)  # this entry's rows (a set may come at several budgets)
        if args.oracle_only:
            plan = shared.planned_orders(oracle, toyset, [steps], args.plan, args.seed)[steps]
            train_rows.append({"toyset": toyset.name, "model": "plan on oracle", "order": str(plan)})
            train_rows.append({"toyset": toyset.name, "model": "oracle head", **fit_head(oracle, toyset, steps, args)})
            for row in evaluate(oracle, [toyset], points=points(steps, plan, True), samples=args.samples,
                                seed=args.seed, decoder_nll=True):
                rows.append({"model": "oracle", "setting": shared.setting(row), **row})
            print(shared.comparison_table(rows[first:], ["oracle"]), flush=True)
            continue
        if not (base / "jointobj.json").exists():  # the per-token base, reused on later runs
            init = shared.fresh_model(root / "init", toyset, args)
            _, record = shared.train(init, name, root / "base.staging", "token_ce", {}, args.base_steps,
                                     args.base_learning_rate, args)
            shutil.rmtree(base, ignore_errors=True)
            (root / "base.staging").rename(base)
            train_rows.append({"toyset": toyset.name, "model": "base", **record})
        models = {"oracle": oracle, "base": Denoiser.from_pretrained(base).eval()}
        plans = {"oracle": shared.planned_orders(oracle, toyset, [steps], args.plan, args.seed)[steps],
                 "base": shared.planned_orders(models["base"], toyset, [steps], args.plan, args.seed)[steps]}
        for label, plan in plans.items():
            train_rows.append({"toyset": toyset.name, "model": f"plan on {label}", "order": str(plan)})

        start = time.perf_counter()
        models["head"] = Denoiser.from_pretrained(base).eval()
        train_rows.append({"toyset": toyset.name, "model": "head", **fit_head(models["head"], toyset, steps, args)})
        spent = time.perf_counter() - start
        if args.law_steps:
            models["head"].save_pretrained(work / "head")
            models["law"], record = shared.train(
                work / "head", name, work / "law", "mixture",
                {"token_ce_weight": 0.5, "logsum": {"orders": [f"learned:steps={steps}"], "max_rows": 1024}},
                args.law_steps, args.learning_rate, args)
            train_rows.append({"toyset": toyset.name, "model": "head + law", **record})
            spent += record["train_s"]
        if args.law_steps and args.law_planned:
            models["planned_law"], record = shared.train(
                base, name, work / "planned_law", "mixture",
                {"token_ce_weight": 0.5, "logsum": {"orders": [str(plans["base"])], "max_rows": 1024}},
                args.law_steps, args.learning_rate, args)
            train_rows.append({"toyset": toyset.name, "model": "planned_law", **record})
        models["token_ce"], record = shared.train(base, name, work / "token_ce", "token_ce", {}, 10**6,
                                                  args.learning_rate, args, seconds=spent)
        train_rows.append({"toyset": toyset.name, "model": "token_ce (same seconds)", **record})
        train_rows.append({"toyset": toyset.name, "model": "oracle head", **fit_head(oracle, toyset, steps, args)})

        for label, denoiser in models.items():
            plan = plans["oracle" if label == "oracle" else "base"]
            learned = label in ("oracle", "head", "law")
            for row in evaluate(denoiser, [toyset], points=points(steps, plan, learned), samples=args.samples,
                                seed=args.seed, decoder_nll=True):
                rows.append({"model": label, "setting": shared.setting(row), **row})
        write_measurements(args.json, train_rows + rows, config=vars(args))  # a killed run keeps what it has
        print(format_table(train_rows[first_trained:],
                           ["toyset", "model", "steps", "train_s", "reward_first", "reward_last", "order"]))
        print(shared.comparison_table(rows[first:], list(models)), flush=True)
    write_measurements(args.json, train_rows + rows, config=vars(args))
    print(f"wrote {args.json}")
    return train_rows + rows


if __name__ == "__main__":
    main()

"""Cost of training on the decoder's own law: step time against a TokenCE step, peak memory against M.

    python eval/bench_decoder_law.py --json runs/bench_decoder_law.json

Models and data as the main job's: the embedded base's tiny ModernBERT (`jointobj.training.embedded.BASE_SIZE`,
randomly initialised: the step's work does not depend on the weights at a fixed step budget) with
the set's own tokenizer, batches of --batch examples of agreement and latin_square_3.

- time: one training step (forward + backward + AdamW step) of TokenCE, of the decoder-order
  log-sum alone (`orders: ["confidence:steps=K"]`) and mixed half and half with TokenCE
  (`mixture`, token_ce_weight 0.5), K in --budgets; every candidate owns a copy of the model and
  its optimiser, and all are timed in turns (`jointobj.evaluation.benchmark.time_interleaved`),
  so the ratios to TokenCE are measured side by side. Aim (issue 22): <= 4x at K <= 4. Beside
  the times, counted on one more step: the denoiser's forwards and their rows (with and without
  grad, recomputations under checkpointing included; backward passes not), which load does not blur.
- memory: peak of one log-sum step with M decoder orders (confidence, margin, entropy, l2r at
  --memory-steps steps, then the same at one step more), M in --orders, and of a TokenCE step;
  the log-sum's default chunks (max_rows: the batch size) and checkpointing (exact mode);
  each cell in a fresh process (so no cell inherits another's heap) runs a warm-up step, then
  reports three peaks of later steps: tensor_peak (`jointobj.evaluation.benchmark.tensor_peak_bytes`:
  the bytes of tensor storages made inside the step and alive at one moment, counted by a
  TorchDispatchMode ledger: activations, logits, gradients, recomputations; exact, no allocator
  caches), rss_peak (`peak_bytes`: the largest resident set a sampling thread sees during the step,
  less what was resident before it; real memory, allocator caches and sampling noise included) and
  resource.getrusage(RUSAGE_SELF).ru_maxrss (the whole process's peak: imports, model, steps).
  Aim: flat in M.
- --profile SET:K: torch.profiler's table of one decoder-order step instead (where the time goes).

Ratios only mean something within one run; the machine may be shared (say so beside them).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import torch

from jointobj.diffusion.batch import answer_batch
from jointobj.evaluation.benchmark import peak_bytes, tensor_peak_bytes, time_interleaved, write_measurements
from jointobj.evaluation.report import format_table
from jointobj.model.denoiser import Denoiser
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives import LogSumOrdersLoss, MixtureLoss, TokenCELoss
from jointobj.toysets.builtin import load_toyset
from jointobj.training.embedded import BASE_SIZE
from jointobj.utils.registry import split_names

MEMORY_POLICIES = ("confidence", "margin", "entropy", "l2r")
TIME_COLUMNS = ["toyset", "step", "K", "forwards", "forward_rows", "median_ms", "ratio_to_token_ce"]
MEMORY_COLUMNS = ["toyset", "step", "M", "tensor_peak_mib", "rss_peak_mib", "maxrss_mib", "step_s"]


def _ints(text: str) -> list[int]:
    return [int(t) for t in split_names(text)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sets", type=split_names, default=split_names("agreement,latin_square_3"))
    parser.add_argument("--budgets", type=_ints, default=[2, 3, 4], help="K: steps per answer of the decoder order")
    parser.add_argument("--orders", type=_ints, default=[1, 2, 4, 8], help="M of the memory part")
    parser.add_argument("--memory-steps", type=int, default=2, help="K of the memory part's orders")
    parser.add_argument("--memory-set", default="latin_square_3")
    parser.add_argument("--batch", type=int, default=64, help="examples per step (the main job's)")
    parser.add_argument("--max-rows", type=int, default=1024,
                        help="time part: the log-sum's rows per forward (the main job's and objective_experiment's)")
    parser.add_argument("--memory-batch", type=int, default=256, help="memory part: examples per step")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", type=split_names, default=["time", "memory"], help="time, memory or both")
    parser.add_argument("--profile", default=None, metavar="SET:K", help="profile one decoder-order step instead")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: one cell, in a child
    parser.add_argument("--json", default="runs/bench_decoder_law.json", metavar="FILE")
    return parser.parse_args(argv)


def set_up(name: str, batch_size: int, seed: int) -> tuple[Denoiser, dict]:
    """The main job's tiny base shape for set `name` (its own tokenizer) and one batch of its examples."""
    toyset = load_toyset(name)
    tokenizer = toyset.tokenizer
    model = tiny_masked_lm("modernbert", vocab_size=len(tokenizer), size=BASE_SIZE,
                           max_positions=max(32, toyset.length), seed=seed)
    denoiser = Denoiser(model, tokenizer=tokenizer)
    prompts, answers = toyset.sample(batch_size, torch.Generator().manual_seed(seed))  # [b, lp], [b, la]
    return denoiser, answer_batch(prompts, answers)  # [b, l]


def law_loss(orders: list[str], mixed: bool, max_rows: int | None) -> torch.nn.Module:
    """The decoder-order log-sum (exact mode, its defaults otherwise), alone or mixed 0.5 with TokenCE."""
    if mixed:
        return MixtureLoss(0.5, logsum={"orders": orders, "max_rows": max_rows})
    return LogSumOrdersLoss(orders, max_rows=max_rows)


def training_step(denoiser: Denoiser, loss_fn: torch.nn.Module, batch: dict, seed: int):
    """A closure running one step: forward, backward, AdamW step (on its own copy of the model).
    Its `count()` runs one more step and returns (denoiser forwards, rows over those forwards),
    recomputations under checkpointing included, backward passes not."""
    own = copy.deepcopy(denoiser)
    own.train()
    optimizer = torch.optim.AdamW(own.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(own, batch, generator=generator).loss.backward()
        optimizer.step()

    def count() -> tuple[int, int]:
        seen = []
        hook = own.model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(
            (args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True)
        try:
            step()
        finally:
            hook.remove()
        return len(seen), sum(seen)

    step.count = count
    return step


def time_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in args.sets:
        denoiser, batch = set_up(name, args.batch, args.seed)
        candidates = {("token_ce", None): training_step(denoiser, TokenCELoss(), batch, args.seed)}
        for k in args.budgets:
            orders = [f"confidence:steps={k}"]
            for label, mixed in (("law", False), ("0.5 token_ce + 0.5 law", True)):
                loss_fn = law_loss(orders, mixed, args.max_rows)
                candidates[(label, k)] = training_step(denoiser, loss_fn, batch, args.seed)
        seconds = time_interleaved({f"{s}|{k}": run for (s, k), run in candidates.items()}, repeats=args.repeats)
        base = seconds["token_ce|None"]
        for (step, k), run in candidates.items():
            s = seconds[f"{step}|{k}"]
            forwards, forward_rows = run.count()
            rows.append({"part": "time", "toyset": name, "step": step, "K": k, "batch": args.batch,
                         "forwards": forwards, "forward_rows": forward_rows, "median_ms": 1000 * s,
                         "ratio_to_token_ce": s / base})
    return rows


def memory_orders(m: int, steps: int) -> list[str]:
    """M decoder orders: the policies at `steps` steps, then at steps + 1, ..."""
    return [f"{MEMORY_POLICIES[i % len(MEMORY_POLICIES)]}:steps={steps + i // len(MEMORY_POLICIES)}" for i in range(m)]


def measure_cell(args: argparse.Namespace) -> dict:
    """In the child: one warm-up step, one step under `peak_bytes`, one under `tensor_peak_bytes`, then
    the process's ru_maxrss."""
    denoiser, batch = set_up(args.memory_set, args.memory_batch, args.seed)
    m = int(args.memory_of)
    loss_fn = TokenCELoss() if m == 0 else LogSumOrdersLoss(memory_orders(m, args.memory_steps))
    step = training_step(denoiser, loss_fn, batch, args.seed)
    step()  # optimiser state and allocator caches exist before the measured step, as in training
    start = time.perf_counter()
    peak = peak_bytes(step)
    seconds = time.perf_counter() - start
    tensors = tensor_peak_bytes(step)
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"tensor_peak_mib": tensors / 2**20, "rss_peak_mib": peak / 2**20, "maxrss_mib": maxrss_kib / 1024,
            "step_s": seconds}


def memory_rows(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    rows = []
    for m in [0, *args.orders]:
        command = [sys.executable, __file__, *argv, "--memory-of", str(m)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
        rows.append({"part": "memory", "toyset": args.memory_set, "batch": args.memory_batch,
                     "step": "token_ce" if m == 0 else "law log-sum", "M": m or None,
                     "orders": memory_orders(m, args.memory_steps), **measured})
    return rows


def profile(args: argparse.Namespace) -> None:
    name, k = args.profile.split(":")
    denoiser, batch = set_up(name, args.batch, args.seed)
    step = training_step(denoiser, law_loss([f"confidence:steps={k}"], False, args.max_rows), batch, args.seed)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = list(sys.argv[1:] if argv is None else argv)
    if args.memory_of is not None:
        print(json.dumps(measure_cell(args)))
        return []
    if args.profile is not None:
        profile(args)
        return []
    start = time.perf_counter()
    rows = time_rows(args) if "time" in args.parts else []
    if rows:
        print(f"training step (forward + backward + AdamW), batch {args.batch}, max_rows {args.max_rows}, tiny "
              f"ModernBERT '{BASE_SIZE}', {torch.get_num_threads()} thread(s); candidates timed in turns, "
              f"{args.repeats} repeats, median")
        print(format_table(rows, TIME_COLUMNS, precision=2))
    if "memory" in args.parts:
        memory = memory_rows(args, given)
        print(f"\npeak memory of one step on {args.memory_set}, batch {args.memory_batch}, each cell a fresh process: "
              "tensor storages alive at once (TorchDispatchMode ledger), resident set above the step's start "
              "(sampling thread), ru_maxrss of the whole process")
        print(format_table(memory, MEMORY_COLUMNS, precision=1))
        rows += memory
    write_measurements(args.json, rows, command_args=vars(args), total_s=time.perf_counter() - start)
    print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()

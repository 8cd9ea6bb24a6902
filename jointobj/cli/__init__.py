"""The `jointobj` console command: one subcommand per module of this package.

    jointobj --help              lists the subcommands
    jointobj eval --help         joint validity of decoders on toy sets (jointobj/cli/eval.py)
    jointobj generate --help     text from a model directory with any decoder (jointobj/cli/generate.py)
    jointobj probe --help        frequency collapse far from the context (jointobj/cli/probe.py)
    jointobj bench --help        sampler throughput and overhead (jointobj/cli/bench.py)
    jointobj lm-eval --help      lm-evaluation-harness with the jointobj model (jointobj/cli/harness.py)
    jointobj report RUN_DIR      (re)write a finished recipe run's report (jointobj/cli/report.py)

A mistake in what you gave ends in one `jointobj: error: ...` line (exit status 2) naming a log file
with the traceback; `--debug` prints the traceback instead.

Toy sets are named (`likes_tennis`) or given by import reference (`mysets:dates`, see
jointobj/toysets/user_sets.py) wherever a command takes `--toyset`.

Each subcommand module has `main(argv) -> rows`; the scripts under eval/ call the same mains.
"""

from __future__ import annotations

import importlib
import sys

from jointobj.utils.errors import run_command

# subcommand -> (module under jointobj.cli, one-line summary); modules are imported only when run
SUBCOMMANDS = {
    "eval": ("eval", "joint validity, fidelity and cost of decoders on toy sets (oracle or a model directory)"),
    "generate": ("generate", "text from a model directory with any decoder, prompts from a file or stdin"),
    "probe": ("probe", "frequency collapse: what a model predicts far from any visible token"),
    "bench": ("bench", "sampler throughput and its overhead beside the forward, on a tiny model"),
    "lm-eval": ("harness", "lm-evaluation-harness with the jointobj model registered (the lm_eval extra)"),
    "report": ("report", "(re)write the report of a finished recipe run: base, fine-tuned and oracle"),
}


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return ("usage: jointobj SUBCOMMAND [options]   (jointobj SUBCOMMAND --help for its options)\n\n"
            "subcommands:\n" + "\n".join(lines))


def main(argv: list[str] | None = None):
    """Run `jointobj SUBCOMMAND ARGS...`; returns what the subcommand's main returns."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        raise SystemExit(f"jointobj: unknown subcommand {name!r}; known: {', '.join(SUBCOMMANDS)}\n\n{usage()}")
    module = importlib.import_module(f"jointobj.cli.{SUBCOMMANDS[name][0]}")
    return module.main(rest)


def console_main() -> int:
    """Entry point of the `jointobj` console script: a user's mistake ends in one `jointobj: error:` line, its
    traceback in a log file it names (`--debug` shows it instead); see jointobj.utils.errors."""
    return run_command(main, sys.argv[1:])

"""`--no-progress`, the one flag every subcommand and eval/ script takes: no progress bar at all.

    parser = argparse.ArgumentParser(...)
    add_no_progress(parser)          # --no-progress hides every bar as soon as it is parsed

Progress bars (samples done and their rate, weights loading, lm-eval's requests) show on a terminal.
`TQDM_DISABLE=1` in the environment hides them too. tqdm reads it when it is imported, which is
before any flag is parsed, so the flag makes disable=True tqdm's default itself (a bar that asks to
show explicitly still shows), switches off transformers', huggingface_hub's and datasets' own
switches, and sets the variable for jointobj's sampling loop, which reads it at each sweep.
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Any

NO_PROGRESS = "--no-progress"
HELP = "hide progress bars (TQDM_DISABLE=1 does the same)"


def hide_progress() -> None:
    """Switch off every progress bar from here on (jointobj's, transformers', huggingface_hub's, datasets')."""
    os.environ["TQDM_DISABLE"] = "1"
    import tqdm.std

    if not getattr(tqdm.std.tqdm.__init__, "hidden_by_jointobj", False):  # lm-eval's bars pass no `disable`
        quiet = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)
        quiet.hidden_by_jointobj = True
        tqdm.std.tqdm.__init__ = quiet
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        import datasets
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # pragma: no cover - both come with transformers' usual installs
        return
    disable_progress_bars()
    datasets.disable_progress_bars()


class _HideProgress(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=False, help=HELP)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        hide_progress()
        setattr(namespace, self.dest, True)


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """Give `parser` the `--no-progress` flag (it hides the bars as it is parsed)."""
    parser.add_argument(NO_PROGRESS, action=_HideProgress)


def take_no_progress(argv: list[str]) -> list[str]:
    """`argv` without `--no-progress`, hiding the bars if it was there (for a parser that is not ours: lm-eval's)."""
    if NO_PROGRESS in argv:
        hide_progress()
    return [arg for arg in argv if arg != NO_PROGRESS]

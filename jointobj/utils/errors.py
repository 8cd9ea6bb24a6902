"""Which errors are the user's, and the one way a command ends on one.

    raise UserError("output_dir runs/x already holds a run; ...")     # a mistake the user can fix
    with user_errors():                                                # a boundary: ValueError / OSError -> UserError
        data = load_training_data(...)
    sys.exit(run_command(main, argv))                                  # the entry's handler

The rule (`is_user_error`): a `UserError` is a mistake in what the user gave (a flag value, data, a
set reference, a model directory, an output directory). Library code raises it (or a subclass, e.g.
CheckpointError) where it checks what the user gave; `user_errors()` turns the ValueErrors and
missing files of the code behind a boundary into one. A ValueError or FileNotFoundError that
jointobj's own code raised counts too: by the house style such an error is a refusal whose message
says what to do. Anything else (raised inside torch, transformers, ...; any other type) is a bug
and keeps its traceback.

A command ends on a UserError with one line `jointobj: error: MESSAGE (traceback: LOG)` on rank 0
(other ranks print nothing), exit status 2; the traceback goes to the log file it names, or to the
terminal with `--debug` (or JOINTOBJ_DEBUG=1). UserError subclasses ValueError, so callers that
catch ValueError keep working.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["EXIT_USER_ERROR", "UserError", "debug_requested", "is_user_error", "report_user_error", "run_command",
           "user_errors"]

EXIT_USER_ERROR = 2  # argparse's status for a bad command line


class UserError(ValueError):
    """A mistake in what the user gave; its message says what was wrong and what to do."""


@contextlib.contextmanager
def user_errors(context: str | None = None) -> Iterator[None]:
    """Inside: ValueError and FileNotFoundError (the library's refusals of what the user gave) become
    UserError, prefixed by `context` when given. Other exceptions pass unchanged (bugs)."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        message = str(error) if not isinstance(error, OSError) or not error.filename else \
            f"{error.strerror or error}: {error.filename}"
        raise UserError(f"{context}: {message}" if context else message) from error


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # jointobj/


def is_user_error(error: BaseException) -> bool:
    """A UserError, or a ValueError / FileNotFoundError raised by jointobj's own code (see the rule above)."""
    if isinstance(error, UserError):
        return True
    if not isinstance(error, (ValueError, FileNotFoundError)):
        return False
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether a bare `--debug` or JOINTOBJ_DEBUG=1 asks for tracebacks, argv without that flag). A `--debug`
    followed by a value (TrainingArguments' own `--debug underflow_overflow`) is left alone."""
    bare = [at for at, arg in enumerate(argv)
            if arg == "--debug" and (at + 1 == len(argv) or argv[at + 1].startswith("-"))]
    rest = [arg for at, arg in enumerate(argv) if at not in bare]
    return bool(bare) or os.environ.get("JOINTOBJ_DEBUG", "") not in ("", "0"), rest


def report_user_error(error: BaseException, debug: bool = False) -> int:
    """Print `jointobj: error: ...` once (rank 0) with the traceback in a log file (or on stderr with
    debug); returns the exit status."""
    from jointobj.utils.ranks import launcher_rank

    rank = launcher_rank()
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if debug:
        sys.stderr.write(text)
        where = ""
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log = Path(tempfile.gettempdir()) / f"jointobj-error-{stamp}-{os.getpid()}-rank{rank}.log"
        try:
            log.write_text(text)
            where = f" (traceback: {log}; --debug shows it)"
        except OSError:
            where = ""
    if rank == 0:
        message = " ".join(str(error).split("\n")) if "\n" in str(error) else str(error)
        print(f"jointobj: error: {message}{where}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def run_command(main: Callable[[list[str]], Any], argv: list[str]) -> int:
    """Run `main(argv)` as an entry point: 0 on success; a UserError ends in one line (see above)."""
    debug, argv = debug_requested(argv)
    try:
        main(argv)
    except (ValueError, FileNotFoundError) as error:
        if not is_user_error(error):
            raise
        return report_user_error(error, debug)
    return 0

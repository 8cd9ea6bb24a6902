r"""`jointobj lm-eval`: lm-evaluation-harness's command line with the `jointobj` model registered.

    jointobj lm-eval --model jointobj --model_args pretrained=runs/agreement,decoder=confidence,tokens_per_step=2 \
        --tasks my_task --include_path my_tasks/

Every argument is lm_eval's own (`jointobj lm-eval --help`) but `--no-progress` (no progress bars);
the model and its model_args are documented in jointobj/evaluation/lm_eval_model.py. The toy sets
run as the tasks `jointobj_toyset` (generation scored by the set's validator: joint validity and its
Wilson interval) and `jointobj_toyset_loglikelihood`, the set named by lm-eval's --metadata
(jointobj/evaluation/toyset_tasks.py):

    jointobj lm-eval --model jointobj --model_args pretrained=runs/logsum,decoder=confidence,tokens_per_step=2 \
        --tasks jointobj_toyset --metadata '{"toyset": "latin_square_3", "samples": 400}' --no-progress

Needs the `lm-eval` extra (pip install "jointobj[lm-eval]").
"""

from __future__ import annotations

import sys

from jointobj.cli.progress import take_no_progress


def main(argv: list[str] | None = None) -> None:
    try:
        from lm_eval.__main__ import cli_evaluate

        import jointobj.evaluation.lm_eval_model  # noqa: F401  (registers the model)
        from jointobj.evaluation.toyset_tasks import with_task_paths
    except ImportError as error:
        raise ValueError(f"jointobj lm-eval needs lm-evaluation-harness: pip install 'jointobj[lm-eval]' "
                         f"({error})") from error
    saved = sys.argv
    sys.argv = ["jointobj lm-eval", *with_task_paths(take_no_progress(sys.argv[1:] if argv is None else list(argv)))]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved

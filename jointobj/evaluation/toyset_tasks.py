r"""Toy sets as lm-evaluation-harness tasks: a generation task scored by the set's validator (joint
validity, with its 95% Wilson interval) and a log-likelihood task scored against the set's exact law.

    jointobj lm-eval --model jointobj --model_args pretrained=runs/logsum,decoder=confidence,tokens_per_step=2 \
        --tasks jointobj_toyset,jointobj_toyset_loglikelihood --metadata '{"toyset": "latin_square_3"}'

Exact-match against one reference answer calls every other valid answer wrong (a set with many valid
answers scores near 0); these tasks ask the set instead. The two tasks (`lm_eval_tasks/*.yaml`, beside
this module) take any built-in set or user set (`module:attribute`) through lm-eval's own `--metadata`
(`toyset`, `samples` documents drawn from the set's exact law, default 400, `seed`, default 0); `jointobj
lm-eval` finds them by name. A task YAML of your own names lm-eval's Python task hook, `class:`, and the set:

    task: pairs_validity
    class: !function jointobj.evaluation.toyset_tasks.ToySetTask            # or ToySetLikelihoodTask
    dataset_kwargs: {toyset: "mysets:pairs", samples: 400, seed: 0}

Generation (`ToySetTask`): each document is a prompt drawn from the set; the model generates exactly
the set's answer length (`max_gen_toks`, per document) and the answer is valid when its words are the
set's tokens and the set's validator accepts them. Metrics: `validity` (mean, with lm-eval's
standard error) and `validity_low` / `validity_high` (the 95% Wilson interval, honest at 0 and 1).

Log-likelihood (`ToySetLikelihoodTask`): each document is an exact draw (prompt, answer) from the set;
the model scores log q(answer | prompt) (the jointobj model: its K-block likelihood, `order` and
`blocks` model args). Metrics: `log_likelihood` (mean, nats per answer) and `kl_to_set`, the mean of
log p(answer | prompt) - log q(answer | prompt) over draws from p: an unbiased estimate of
KL(p || q) (0 for a model that has the set's law; lower is better).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
from lm_eval.api.task import ConfigurableTask

from jointobj.evaluation.metrics import wilson_interval
from jointobj.toysets.builtin import ToySet, load_toyset

__all__ = ["TASKS", "TASKS_DIR", "ToySetLikelihoodTask", "ToySetTask", "score_likelihood", "score_validity",
           "toyset_documents", "wilson_high", "wilson_low", "with_task_paths"]

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
TASKS = {path.stem: path for path in sorted(TASKS_DIR.glob("*.yaml"))}  # task name -> its YAML


def with_task_paths(argv: Sequence[str]) -> list[str]:
    """lm-eval command-line arguments with these tasks' names in `--tasks` replaced by their YAML
    files (lm-eval loads a task from its file path), so they run beside any `--include_path`."""
    out, at = [], 0
    while at < len(argv):
        arg = argv[at]
        if arg == "--tasks" and at + 1 < len(argv):
            out += [arg, _paths(argv[at + 1])]
            at += 2
            continue
        out.append("--tasks=" + _paths(arg.split("=", 1)[1]) if arg.startswith("--tasks=") else arg)
        at += 1
    return out


def _paths(tasks: str) -> str:
    return ",".join(str(TASKS[name]) if name in TASKS else name for name in tasks.split(","))


@functools.lru_cache(maxsize=None)
def _toyset(name: str) -> ToySet:
    return load_toyset(name)


def toyset_documents(toyset: str | None = None, samples: int = 400, seed: int = 0, **_: Any) -> datasets.DatasetDict:
    """lm-eval's `custom_dataset`: `samples` exact draws of toy set `toyset` (a name or module:attribute)
    as a `test` split of `toyset`, `prompt`, `answer` (texts), `answer_length` and `log_prob` (exact
    log p(answer | prompt)). Other keys (lm-eval's metadata) are ignored."""
    if not toyset:
        raise ValueError("a toy-set task needs its set: lm_eval ... --metadata '{\"toyset\": \"latin_square_3\"}', "
                         "or dataset_kwargs: {toyset: mysets:pairs} in the task YAML")
    if "," in str(toyset):
        raise ValueError(f"one toy set per task, got {toyset!r}; write a task per set")
    owner = _toyset(str(toyset))
    prompts, answers = owner.sample(int(samples), torch.Generator().manual_seed(int(seed)))  # [n, lp], [n, la]
    log_probs = owner.log_prob(prompts, answers).tolist()
    rows = [{"toyset": str(toyset), "prompt": owner.describe(p), "answer": owner.describe(a),
             "answer_length": owner.answer_length, "log_prob": lp}
            for p, a, lp in zip(prompts, answers, log_probs)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _ids(owner: ToySet, text: str) -> list[int] | None:
    """The set's token ids of a whitespace-split text; None when a word is not one of its tokens."""
    vocab = owner.tokenizer.get_vocab()
    ids = [vocab.get(word) for word in text.split()]
    return None if any(i is None for i in ids) else ids


def score_validity(doc: dict, results: Sequence[str]) -> dict[str, float]:
    """lm-eval's `process_results` for generation: 1.0 when the answer is valid under the set's validator
    (the set's answer length, every word one of its tokens), else 0.0; the same value feeds the interval."""
    owner = _toyset(doc["toyset"])
    answer, prompt = _ids(owner, results[0]), _ids(owner, doc["prompt"])
    valid = (answer is not None and prompt is not None and len(answer) == owner.answer_length
             and bool(owner.is_valid(torch.tensor([prompt]), torch.tensor([answer]))[0]))
    return {name: float(valid) for name in ("validity", "validity_low", "validity_high")}


def score_likelihood(doc: dict, results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """lm-eval's `process_results` for the log-likelihood task: the model's log q(answer | prompt) and
    log p - log q (its mean over draws from p estimates KL(p || q))."""
    log_q = float(results[0][0])
    return {"log_likelihood": log_q, "kl_to_set": float(doc["log_prob"]) - log_q}


def wilson_low(items: Sequence[float]) -> float:
    """Aggregation: the lower end of the 95% Wilson interval of the valid fraction."""
    return wilson_interval(int(sum(items)), len(items))[0]


def wilson_high(items: Sequence[float]) -> float:
    """Aggregation: the upper end of the 95% Wilson interval of the valid fraction."""
    return wilson_interval(int(sum(items)), len(items))[1]


def _metric(name: str, aggregation: Any, higher_is_better: bool) -> dict[str, Any]:
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher_is_better}


class ToySetTask(ConfigurableTask):
    """A toy set as a generation task scored by its validator (lm-eval's `class:` hook; module docstring).
    Every key of the task YAML is lm-eval's own and overrides these defaults."""

    DEFAULTS: dict[str, Any] = {
        "custom_dataset": toyset_documents, "test_split": "test", "output_type": "generate_until",
        "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}", "generation_kwargs": {"until": []},
        "process_results": score_validity,
        "metric_list": [_metric("validity", "mean", True), _metric("validity_low", wilson_low, True),
                        _metric("validity_high", wilson_high, True)],
        "metadata": {"version": 1.0},
    }

    def __init__(self, config: dict | None = None, **kwargs: Any):
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        metadata = {**self.DEFAULTS["metadata"], **(config.get("metadata") or {})}
        super().__init__(config={**self.DEFAULTS, **config, "metadata": metadata}, **kwargs)

    def download(self, dataset_kwargs: dict | None = None, **kwargs: Any) -> None:
        """The documents, from lm-eval's --metadata with the task's own dataset_kwargs on top (lm-eval
        passes both as keywords, so a set named in both would be a duplicate keyword)."""
        self.dataset = self.config.custom_dataset(**{**(self.config.metadata or {}), **(dataset_kwargs or {})})

    def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any):
        """As lm-eval builds them, with `max_gen_toks` set to the set's answer length (a masked
        diffusion model decodes exactly that many tokens)."""
        requests = super().construct_requests(doc, ctx, **kwargs)
        if self.OUTPUT_TYPE == "generate_until":
            for request in requests if isinstance(requests, list) else [requests]:
                request.arguments[1]["max_gen_toks"] = int(doc["answer_length"])
        return requests


class ToySetLikelihoodTask(ToySetTask):
    """A toy set as a log-likelihood task: the model's log q(answer | prompt) on exact draws, and KL(p || q)."""

    DEFAULTS: dict[str, Any] = {
        **ToySetTask.DEFAULTS, "output_type": "loglikelihood", "target_delimiter": " ",
        "process_results": score_likelihood,
        "metric_list": [_metric("log_likelihood", "mean", True), _metric("kl_to_set", "mean", False)],
    }
    DEFAULTS.pop("generation_kwargs")

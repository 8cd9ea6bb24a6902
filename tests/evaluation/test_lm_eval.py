"""The lm-eval model `jointobj` (jointobj/evaluation/lm_eval_model.py), offline: its likelihood checked by
brute force on the exact oracle, its generation with stop strings, bad model args, and whole
lm-eval runs on local custom tasks (task YAML + local JSONL; nothing downloaded).
Skipped when lm-evaluation-harness (the `lm_eval` extra) is not installed."""

import json
import math
import textwrap
from types import SimpleNamespace

import pytest

pytest.importorskip("lm_eval")

from jointobj.evaluation.lm_eval_model import JointObjLM  # noqa: E402


def request(*args):
    return SimpleNamespace(args=args)


def test_l2r_likelihood_with_all_blocks_is_the_exact_conditional_and_one_block_the_product_of_marginals():
    exact = JointObjLM(oracle="likes_tennis", order="l2r", blocks="all")
    one_block = JointObjLM(oracle="likes_tennis", order="l2r", blocks=1)
    pairs = [("<likes_tennis>", " he likes apple"), ("<likes_tennis>", " i play tennis"),
             ("<likes_tennis>", " he likes tennis")]
    got = [score for score, _ in exact.loglikelihood([request(*p) for p in pairs])]
    assert got[:2] == pytest.approx([math.log(0.5)] * 2, abs=1e-5)
    assert got[2] < -1000  # impossible under the set: the oracle's impossible logit
    # one block: every token drawn from its marginal given only the prompt: (1/2)^3, also for the mixed answer
    marg = [score for score, _ in one_block.loglikelihood([request(*p) for p in pairs])]
    assert marg == pytest.approx([3 * math.log(0.5)] * 3, abs=1e-5)


def test_several_orders_give_the_log_of_their_mean_probability():
    # cities: "new york", "new orleans", "mexico city", "panama city" (1/4 each); l2r and r2l both exact at
    # blocks=all, so their mixture is exact too; with blocks=1 l2r and r2l coincide (one block).
    both = JointObjLM(oracle="cities", order="l2r+r2l", blocks="all")
    (score, greedy), = both.loglikelihood([request("<cities>", " new york")])
    assert score == pytest.approx(math.log(0.25), abs=1e-5) and greedy is False


def test_rolling_likelihood_scores_every_token_of_the_text(tiny_model_dir):
    lm = JointObjLM(pretrained=str(tiny_model_dir), device="cpu", order="r2l", blocks=2)
    rolled = lm.loglikelihood_rolling([request("<cities> new york")])
    (whole, _), = lm.loglikelihood([request("", "<cities> new york")])
    (tail, _), = lm.loglikelihood([request("<cities>", " new york")])
    assert rolled[0] == pytest.approx(whole) and rolled[0] < tail < 0  # scoring the tag too costs probability


def test_generate_until_runs_the_decoder_and_cuts_at_stop_strings():
    lm = JointObjLM(oracle="copy_2", decoder="random", tokens_per_step="all")
    out = lm.generate_until([request("<copy_2> A B [SEP]", {"until": ["\n"], "max_gen_toks": 2}),
                             request("<copy_2> C A [SEP]", {"until": [" A"], "max_gen_toks": 2})])
    assert out == ["A B", "C"]


@pytest.mark.parametrize("args,message", [
    ("oracle=cities,decoder=confidence,tokens=2", r"unknown model_args for --model jointobj: tokens; known: "
                                                  r"pretrained, oracle, decoder"),
    ("oracle=cities,decoder=greedy", r"unknown decoder 'greedy'"),
    ("oracle=cities,decoder=l2r,threshold=0.9", r"decoder 'l2r' takes none of \['threshold'\]"),
    ("oracle=cities,order=sideways", r"unknown generation order 'sideways'"),
    ("decoder=l2r", r"exactly one of pretrained=DIR"),
])
def test_bad_model_args_are_clear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        JointObjLM.create_from_arg_string(args)


@pytest.fixture
def local_tasks(tmp_path):
    """A generation task and a multiple-choice task over local JSONL files."""
    gen = [{"prompt": "<copy_2> A B [SEP]", "answer": "A B"}, {"prompt": "<copy_2> D C [SEP]", "answer": "D C"}]
    mc = [{"prompt": "<likes_tennis>", "choices": [" he likes apple", " he likes tennis"], "label": 0},
          {"prompt": "<likes_tennis>", "choices": [" i play apple", " i play tennis"], "label": 1}]
    for name, rows in (("gen", gen), ("mc", mc)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "jointobj_copy.yaml").write_text(textwrap.dedent(f"""
        task: jointobj_copy
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / 'gen.jsonl'}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{prompt}}}}"
        doc_to_target: "{{{{answer}}}}"
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 2
        metric_list:
          - metric: exact_match
    """))
    (tmp_path / "jointobj_likes.yaml").write_text(textwrap.dedent(f"""
        task: jointobj_likes
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / 'mc.jsonl'}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{prompt}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{label}}}}"
        target_delimiter: ""
        metric_list:
          - metric: acc
    """))
    return tmp_path


def _run(model_args, tasks, include_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(model="jointobj", model_args=model_args, tasks=tasks,
                                      task_manager=TaskManager(include_path=str(include_path)))
    return results["results"]


@pytest.mark.slow
def test_lm_eval_runs_the_oracle_on_local_tasks(local_tasks, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = _run("oracle=copy_2+likes_tennis,decoder=random,tokens_per_step=all", ["jointobj_copy", "jointobj_likes"],
                   local_tasks)
    assert results["jointobj_copy"]["exact_match,none"] == 1.0
    assert results["jointobj_likes"]["acc,none"] == 1.0


@pytest.mark.slow
def test_lm_eval_runs_a_saved_tiny_model_from_its_command_line(local_tasks, tiny_model_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "jointobj.evaluation.lm_eval_model", "--model", "jointobj", "--model_args",
         f"pretrained={tiny_model_dir},decoder=threshold,threshold=0.5,tokens_per_step=2,blocks=2,device=cpu",
         "--tasks", "jointobj_copy,jointobj_likes", "--include_path", str(local_tasks), "--output_path", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jointobj_copy" in done.stdout and "jointobj_likes" in done.stdout


# ---------------------------------------------------------------- toy sets as lm-eval tasks (toyset_tasks.py)


def _toyset_run(model_args, tasks, metadata, include_path=None):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from jointobj.evaluation.toyset_tasks import TASKS_DIR

    manager = TaskManager(include_path=[str(TASKS_DIR)] + ([str(include_path)] if include_path else []),
                          metadata=metadata)
    return lm_eval.simple_evaluate(model="jointobj", model_args=model_args, tasks=tasks,
                                   task_manager=manager)["results"]


@pytest.mark.slow
def test_a_toy_set_task_scores_joint_validity_with_its_interval(monkeypatch):
    # One parallel step of the exact oracle on likes_tennis is jointly valid 1/4 of the time (the marginal
    # trap); l2r one token per step always. exact_match against the one drawn reference would score
    # neither (a valid answer other than the reference counts as wrong).
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    trap = _toyset_run("oracle=likes_tennis,decoder=random,tokens_per_step=all", ["jointobj_toyset"],
                       {"toyset": "likes_tennis", "samples": 300, "seed": 0})["jointobj_toyset"]
    assert trap["validity_low,none"] < 0.25 < trap["validity_high,none"]
    assert trap["validity_high,none"] - trap["validity_low,none"] < 0.11  # 300 samples: about +-0.05
    exact = _toyset_run("oracle=likes_tennis,decoder=l2r,tokens_per_step=1", ["jointobj_toyset"],
                        {"toyset": "likes_tennis", "samples": 50})["jointobj_toyset"]
    assert exact["validity,none"] == 1.0 and exact["validity_low,none"] > 0.9


@pytest.mark.slow
def test_a_toy_set_likelihood_task_measures_kl_to_the_set(monkeypatch):
    # The exact oracle's l2r chain rule is the set's law (KL 0); one block is the product of marginals,
    # (1/2)^3 for every answer of likes_tennis against the set's 1/2: KL = 2 log 2.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    metadata = {"toyset": "likes_tennis", "samples": 40}
    exact = _toyset_run("oracle=likes_tennis,blocks=all", ["jointobj_toyset_loglikelihood"], metadata)
    marginal = _toyset_run("oracle=likes_tennis,blocks=1", ["jointobj_toyset_loglikelihood"], metadata)
    assert exact["jointobj_toyset_loglikelihood"]["kl_to_set,none"] == pytest.approx(0.0, abs=1e-5)
    assert marginal["jointobj_toyset_loglikelihood"]["kl_to_set,none"] == pytest.approx(2 * math.log(2), abs=1e-5)


@pytest.mark.slow
def test_jointobj_lm_eval_runs_a_user_sets_task_yaml_beside_a_built_in_one(tmp_path, monkeypatch):
    # A user's own set through its task YAML (lm-eval's `class:` hook), next to a built-in set by name,
    # from the command line with --include_path (the toy-set tasks are found by name all the same).
    from jointobj.cli import main

    (tmp_path / "mysets.py").write_text(textwrap.dedent("""
        from jointobj.toysets.user_sets import make_toyset
        pairs = make_toyset("pairs", {"salt pepper": 0.4, "bread butter": 0.35, "fish chips": 0.25})
    """))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "pairs.yaml").write_text(textwrap.dedent("""
        task: pairs_validity
        class: !function jointobj.evaluation.toyset_tasks.ToySetTask
        dataset_kwargs: {toyset: "mysets:pairs", samples: 60, seed: 0}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "results"
    main(["lm-eval", "--model", "jointobj", "--model_args", "oracle=mysets:pairs+cities,decoder=l2r",
          "--tasks", "pairs_validity,jointobj_toyset", "--metadata", '{"toyset": "cities", "samples": 30}',
          "--include_path", str(tasks), "--output_path", str(out), "--no-progress"])
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert results["pairs_validity"]["validity,none"] == 1.0 and results["pairs_validity"]["sample_len"] == 60
    assert results["jointobj_toyset"]["validity,none"] == 1.0 and results["jointobj_toyset"]["sample_len"] == 30


def test_a_toy_set_answer_with_a_foreign_word_or_the_wrong_length_is_invalid():
    from jointobj.evaluation.toyset_tasks import score_validity

    doc = {"toyset": "likes_tennis", "prompt": "<likes_tennis>"}
    assert score_validity(doc, ["he likes apple"])["validity"] == 1.0
    assert score_validity(doc, ["he likes tennis"])["validity"] == 0.0  # the trap
    assert score_validity(doc, ["he likes"])["validity"] == 0.0
    assert score_validity(doc, ["he likes zebras"])["validity"] == 0.0  # not a token of the set

"""User sets: make_toyset from an exact distribution or a Dataset, its tokenizer, its validator,
its errors, and import references (`module:attribute`) resolved by load_toyset."""

import textwrap

import datasets
import pytest
import torch

from jointobj.evaluation.sweep import evaluate
from jointobj.toysets.builtin import load_toyset, resolve_toyset_reference, toy_tokenizer
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.toysets.user_sets import extended_tokenizer, make_toyset

DATES = {("when is christmas", "december 25"): 0.3, ("when is halloween", "october 31"): 0.2,
         ("when is christmas", "december 24"): 0.1, ("when is halloween", "october 30"): 0.4}


def ids(toyset, text):
    vocab = toyset.tokenizer.get_vocab()
    return torch.tensor([vocab[w] for w in text.split()])


def test_exact_conditional_distribution_becomes_prompt_and_answer_probabilities():
    dates = make_toyset("dates", DATES)
    assert dates.prompt_length == 5 and dates.answer_length == 2  # <dates> when is christmas [SEP]
    christmas = ids(dates, "<dates> when is christmas [SEP]")
    answers, probs = dates.conditional(christmas)
    got = {dates.describe(a): float(p) for a, p in zip(answers, probs)}
    assert got == pytest.approx({"december 25": 0.75, "december 24": 0.25})
    assert sorted(dates.prompt_probs.tolist()) == pytest.approx([0.4, 0.6])
    prompts, answers = dates.sample(20_000, torch.Generator().manual_seed(0))
    hits = (answers == ids(dates, "october 30")).all(1).double().mean()
    assert abs(float(hits) - 0.4) < 4 * (0.4 * 0.6 / 20_000) ** 0.5  # 4 standard errors


def test_text_distribution_is_unconditional_behind_its_tag():
    colours = make_toyset("colours", {"red apple": 0.7, "green pear": 0.2, "red cherry": 0.1})
    assert colours.unconditional and colours.describe(colours.prompts[0]) == "<colours>"
    answers, probs = colours.answer_distribution()
    assert {colours.describe(a): round(float(p), 9) for a, p in zip(answers, probs)} == {
        "green pear": 0.2, "red apple": 0.7, "red cherry": 0.1}


def test_tokenizer_extends_the_builtin_one_keeping_its_ids():
    dates = make_toyset("dates", DATES)
    builtin = toy_tokenizer().get_vocab()
    vocab = dates.tokenizer.get_vocab()
    assert all(vocab[w] == i for w, i in builtin.items())
    added = sorted(set(vocab) - set(builtin), key=vocab.get)
    assert added == sorted(added) and {"<dates>", "christmas", "december", "25"} <= set(added)
    assert make_toyset("dates", DATES).tokenizer.get_vocab() == vocab  # deterministic across builds
    # a built-in set and the user set share one oracle (the larger vocabulary)
    oracle = OracleDenoiser(load_toyset("likes_tennis"), dates)
    assert oracle.vocab_size == len(dates.tokenizer)


def test_unknown_words_without_extension_are_listed_with_the_fix():
    with pytest.raises(ValueError, match=r"does not know 2 word\(s\): '25', '<dates>'.*extend_vocabulary=True"):
        make_toyset("dates", {("when is christmas", "december 25"): 1.0}, extend_vocabulary=False,
                    tokenizer=extended_tokenizer(["when", "is", "christmas", "december"]))
    known = extended_tokenizer(["<dates>", "when", "is", "christmas", "december", "25"])
    assert make_toyset("dates", {("when is christmas", "december 25"): 1.0}, extend_vocabulary=False,
                       tokenizer=known).tokenizer is known


def test_validator_gets_answer_then_prompt_text_and_defaults_to_the_support():
    seen = []

    def validator(answer: str, prompt: str) -> bool:
        seen.append((answer, prompt))
        return answer.split()[0] == {"when is christmas": "december", "when is halloween": "october"}[prompt]

    dates = make_toyset("dates", DATES, validator)
    assert ("december 25", "when is christmas") in seen
    christmas = ids(dates, "<dates> when is christmas [SEP]")
    mixed = ids(dates, "december 31")  # not in the support, but the validator only looks at the month
    assert dates.is_valid(christmas[None], mixed[None]).tolist() == [True]
    by_support = make_toyset("dates", DATES)
    assert by_support.is_valid(christmas[None].expand(2, -1), torch.stack([mixed, ids(dates, "december 24")])
                               ).tolist() == [False, True]


def test_validator_rejecting_its_own_data_names_the_example_with_its_text():
    with pytest.raises(ValueError, match=r"rejects the set's own example \d: prompt '<dates> when is halloween "
                                         r"\[SEP\]', answer 'october 3[01]'"):
        make_toyset("dates", DATES, lambda answer, prompt: answer.startswith("december"))


def test_a_set_holding_the_unknown_token_blames_the_tokenizer_not_the_validator():
    from jointobj.toysets.builtin import toyset_from_dataset

    tokenizer = toy_tokenizer()
    ids = tokenizer("<cities> zebra crossing", add_special_tokens=False)["input_ids"]  # unknown words: [UNK]
    rows = datasets.Dataset.from_dict({"input_ids": [ids], "prompt_mask": [[True, False, False]]})
    with pytest.raises(ValueError, match=r"example 0 holds the unknown token '\[UNK\]' .*answer '\[UNK\] \[UNK\]'.*"
                                         r"make_toyset \(it extends the tokenizer"):
        toyset_from_dataset("zebras", rows, lambda prompt, answer: "[UNK]" not in answer)


def test_probabilities_that_miss_one_say_by_how_much_and_normalise_on_request():
    with pytest.raises(ValueError, match=r"sum to 0.9 \(0.1 short of 1\).*normalise=True"):
        make_toyset("c", {"red apple": 0.6, "green pear": 0.3})
    with pytest.raises(ValueError, match=r"sum to 1.5 \(0.5 over 1\)"):
        make_toyset("c", {"red apple": 1.0, "green pear": 0.5})
    fixed = make_toyset("c", {"red apple": 6, "green pear": 3}, normalise=True)
    assert sorted(fixed.answer_distribution()[1].tolist()) == pytest.approx([1 / 3, 2 / 3])


@pytest.mark.parametrize("data,message", [
    ({"red apple": 0.5, "pear": 0.5}, r"answers differ in length \(1 tokens: 'pear'; 2 tokens: 'red apple'\)"),
    ({"red apple": 1.0, "green pear": 0.0}, r"'green pear' is 0.0; every entry needs a positive"),
    ({("a", "b"): 0.5, 3: 0.5}, r"key 3 is neither"),
    ({}, "distribution is empty"),
    ({"red [MASK]": 1.0}, r"reserved token\(s\) \[MASK\]"),
])
def test_bad_tables_are_clear_errors(data, message):
    with pytest.raises(ValueError, match=message):
        make_toyset("c", data)


def test_datasets_of_text_rows_with_or_without_probabilities():
    counted = make_toyset("c", datasets.Dataset.from_dict({"text": ["red apple", "red apple", "green pear",
                                                                    "red apple"]}))
    assert sorted(counted.answer_distribution()[1].tolist()) == pytest.approx([0.25, 0.75])
    rows = datasets.Dataset.from_dict({"prompt": [p for p, _ in DATES], "answer": [a for _, a in DATES],
                                       "probability": list(DATES.values())})
    assert make_toyset("dates", rows).flat_probs.tolist() == make_toyset("dates", DATES).flat_probs.tolist()
    with pytest.raises(ValueError, match="columns \\['words'\\]"):
        make_toyset("c", datasets.Dataset.from_dict({"words": ["a"]}))


def test_the_oracle_on_a_user_set_is_exact_for_one_token_per_step_and_trapped_in_one_step():
    pairs = make_toyset("pairs", {"red apple": 0.5, "green pear": 0.5})
    rows = evaluate(OracleDenoiser(pairs), [pairs], ["random"], [1, "all"], samples=400, seed=0)
    assert rows[0]["validity"] == 1.0 and rows[0]["validity_low"] > 0.99
    # one step draws the two words independently: valid with probability 1/2
    assert abs(rows[1]["validity"] - 0.5) < 4 * (0.25 / 400) ** 0.5


# ---------------------------------------------------------------- import references


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_sets.py").write_text(textwrap.dedent("""
        from jointobj.toysets.user_sets import make_toyset

        colours = make_toyset("colours", {"red apple": 0.5, "green pear": 0.5})
        not_a_set = 3

        def build():
            return make_toyset("built", {"blue sky": 1.0})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    resolve_toyset_reference.cache_clear()
    yield "my_user_sets"
    resolve_toyset_reference.cache_clear()


def test_import_references_resolve_to_the_set_or_a_function_returning_one(user_module):
    colours = load_toyset(f"{user_module}:colours")
    assert colours.name == "colours" and load_toyset(f"{user_module}:colours") is colours
    assert load_toyset(f"{user_module}:build").name == "built"
    rows = evaluate(OracleDenoiser(f"{user_module}:colours"), [f"{user_module}:colours"], ["l2r"], [1], samples=20)
    assert rows[0]["toyset"] == "colours" and rows[0]["validity"] == 1.0


@pytest.mark.parametrize("reference,message", [
    ("no_such_module_xyz:sets", r"no module 'no_such_module_xyz'"),
    ("my_user_sets:missing", r"module 'my_user_sets' \(.*my_user_sets.py\) has no attribute 'missing'; "
                             r"its toy sets: colours"),
    ("my_user_sets:not_a_set", r"my_user_sets.not_a_set is a int, not a ToySet"),
    ("my_user_sets:", r"not 'package.module:attribute'"),
])
def test_unresolvable_references_name_the_module_and_attribute(user_module, reference, message):
    with pytest.raises(ValueError, match=message):
        load_toyset(reference)


# ---------------------------------------------------------------- commands only: file -> oracle, training, report


@pytest.mark.slow
def test_a_user_set_goes_from_a_file_to_a_trained_model_and_its_report(tmp_path, monkeypatch):
    import json

    from jointobj.cli import main as jointobj_main

    from helpers import load_script

    (tmp_path / "mysets_e2e.py").write_text(
        "from jointobj.toysets.user_sets import make_toyset\n"
        "pairs = make_toyset('pairs', {'red apple': 0.5, 'green pear': 0.5})\n")
    monkeypatch.chdir(tmp_path)  # the module is found from the working directory, as from a shell
    resolve_toyset_reference.cache_clear()
    jointobj_main(["eval", "--oracle", "--toyset", "mysets_e2e:pairs", "--decoder", "random", "--tokens-per-step",
                   "1,all", "--samples", "50", "--json", "oracle.json"])
    assert [r["toyset"] for r in json.loads((tmp_path / "oracle.json").read_text())] == ["pairs", "pairs"]
    result = load_script("recipes/logsum.py").main(
        ["--base_dir", "base", "--base_steps", "5", "--dataset", "mysets_e2e:pairs", "--report_samples", "8",
         "--report_decoders", "confidence", "--report_tokens_per_step", "1,all", "--output_dir", "out",
         "--deepspeed", "", "--max_steps", "2", "--per_device_train_batch_size", "4", "--samples_per_toyset", "16",
         "--save_strategy", "no", "--disable_tqdm", "true"])
    assert {(row["model"], row["toyset"]) for row in result.report} == {  # TokenCE continued: the main job's baseline
        ("base", "pairs"), ("TokenCE", "pairs"), ("fine-tuned", "pairs"), ("oracle", "pairs")}
    assert all("validity_low" in row for row in result.report)
    rows = jointobj_main(["eval", "--model", "out", "--toyset", "mysets_e2e:pairs", "--decoder", "l2r",
                          "--tokens-per-step", "1", "--samples", "8", "--json", "model.json"])
    assert rows[0]["toyset"] == "pairs"
    resolve_toyset_reference.cache_clear()

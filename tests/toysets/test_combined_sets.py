"""Sets named together share one vocabulary; an id a set cannot name is an invalid answer, never a crash.

Before jointobj.toysets.combined, two sets made apart with make_toyset gave their new words the
same ids: the oracle refused them ("give different ids"), and a model trained with a larger
vocabulary crashed the validator (`on_tokens`: TypeError on None) on an id a set could not name.
"""

import json
import textwrap

import pytest
import torch

from jointobj.evaluation.sweep import evaluate
from jointobj.toysets.builtin import load_toyset, resolve_toyset_reference, toy_tokenizer
from jointobj.toysets.combined import combine_toysets, load_toysets
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.toysets.user_sets import make_toyset
from jointobj.utils.errors import UserError

SETS = """
    from jointobj.toysets.user_sets import make_toyset

    rings = make_toyset("rings", {"gold ring": 0.5, "silver ring": 0.5},
                        validator=lambda answer, prompt: answer.endswith("ring"))
    dates = make_toyset("dates", {("when is christmas", "december 25"): 0.5,
                                  ("when is halloween", "october 31"): 0.5})
    ring9 = rings
    _first_ring = rings
"""


@pytest.fixture
def sets_module(tmp_path, monkeypatch):
    (tmp_path / "combo_sets.py").write_text(textwrap.dedent(SETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    resolve_toyset_reference.cache_clear()
    yield "combo_sets"
    resolve_toyset_reference.cache_clear()


def words(toyset, ids) -> list[str]:
    return toyset.tokenizer.convert_ids_to_tokens(ids.tolist())


def test_two_sets_made_apart_share_one_vocabulary_and_keep_their_words():
    rings = make_toyset("rings", {"gold ring": 0.5, "silver ring": 0.5})
    dates = make_toyset("dates", {"december 25": 0.5, "october 31": 0.5})
    first_new = len(toy_tokenizer())  # apart, each set's first new word gets this id
    assert rings.tokenizer.convert_ids_to_tokens(first_new) != dates.tokenizer.convert_ids_to_tokens(first_new)
    combined = load_toysets([rings, dates, "likes_tennis"])
    assert len({id(t.tokenizer) for t in combined}) == 1
    for before, after in zip([rings, dates, load_toyset("likes_tennis")], combined):
        assert [words(before, a) for a in before.flat_answers] == [words(after, a) for a in after.flat_answers]
        assert torch.equal(before.flat_probs, after.flat_probs)
    vocab = combined[0].tokenizer.get_vocab()
    assert all(vocab[w] == i for w, i in toy_tokenizer().get_vocab().items())  # built-in ids kept
    again = load_toysets([dates, rings])  # the order of the names does not change the ids
    assert again[0].tokenizer.get_vocab() == vocab
    rows = evaluate(OracleDenoiser(*combined), combined, ["l2r"], [1], samples=20)
    assert [r["validity"] for r in rows] == [1.0, 1.0, 1.0]


def test_a_model_vocabulary_reencodes_the_sets_and_one_lacking_their_words_is_refused():
    rings = make_toyset("rings", {"gold ring": 0.5, "silver ring": 0.5})
    dates = make_toyset("dates", {"december 25": 0.5, "october 31": 0.5})
    model_vocabulary = load_toysets([rings, dates])[0].tokenizer
    (on_model,) = combine_toysets([dates], tokenizer=model_vocabulary)
    assert on_model.tokenizer is model_vocabulary and words(on_model, on_model.flat_answers[0]) == ["december", "25"]
    lacking = r"toy set 'rings' uses 4 word\(s\) the model's vocabulary lacks \('<rings>', 'gold'"
    with pytest.raises(UserError, match=lacking):
        combine_toysets([rings], tokenizer=toy_tokenizer())


@pytest.mark.parametrize("validator", [None, lambda answer, prompt: answer.endswith("ring")])
def test_an_id_the_set_cannot_name_makes_the_answer_invalid(validator):
    rings = make_toyset("rings", {"gold ring": 0.5, "silver ring": 0.5}, validator=validator)
    size = len(rings.tokenizer)
    prompts = rings.prompts[[0, 0, 0]]  # [3, lp]
    answers = torch.cat([rings.flat_answers[:1], torch.tensor([[size + 5, size - 1]]), torch.tensor([[-1, 4]])])
    assert rings.is_valid(prompts, answers).tolist() == [True, False, False]
    assert "<id 85>" in rings.describe(torch.tensor([85]))


def test_a_builtin_set_scores_a_foreign_id_invalid_too():
    likes = load_toyset("likes_tennis")
    prompts, answers = likes.sample(2, torch.Generator().manual_seed(0))
    answers[1, 0] = len(likes.tokenizer) + 2
    assert likes.is_valid(prompts, answers).tolist() == [True, False]


def test_a_typo_in_a_reference_suggests_close_names_and_hides_private_ones(sets_module):
    with pytest.raises(UserError) as raised:
        load_toyset(f"{sets_module}:ring")
    message = str(raised.value)
    assert "did you mean combo_sets:rings or combo_sets:ring9?" in message
    assert "its toy sets: dates, ring9, rings" in message and "_first_ring" not in message
    assert "--model_name_or_path" not in message


def test_jointobj_eval_combines_two_user_sets(sets_module, tmp_path):
    from jointobj.cli import main as jointobj_main

    rows = jointobj_main(["eval", "--oracle", "--toyset", f"{sets_module}:rings,{sets_module}:dates", "--decoder",
                          "random", "--tokens-per-step", "1,all", "--samples", "40", "--json", "oracle.json"])
    assert [(r["toyset"], r["requested_tokens_per_step"]) for r in rows] == [
        ("rings", 1), ("rings", "all"), ("dates", 1), ("dates", "all")]
    assert [r["validity"] for r in rows if r["requested_tokens_per_step"] == 1] == [1.0, 1.0]
    assert len(json.loads((tmp_path / "oracle.json").read_text())) == 4


@pytest.mark.slow  # pretrains a base on the two sets, fine-tunes, reports, evaluates
def test_two_user_sets_go_through_the_recipe_report_eval_and_jointobj_report(sets_module, tmp_path):
    from jointobj.cli import main as jointobj_main

    from helpers import load_script

    both = f"{sets_module}:rings,{sets_module}:dates"
    result = load_script("recipes/logsum.py").main(
        ["--base_dir", "base", "--base_steps", "5", "--dataset", both, "--report_samples", "8",
         "--report_decoders", "confidence", "--report_tokens_per_step", "1,all", "--output_dir", "out",
         "--deepspeed", "", "--max_steps", "2", "--per_device_train_batch_size", "4", "--samples_per_toyset", "16",
         "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"])
    assert {(row["model"], row["toyset"]) for row in result.report} == {
        (model, toyset) for model in ("base", "TokenCE", "fine-tuned", "oracle") for toyset in ("rings", "dates")}
    assert (tmp_path / "out" / "finished.json").exists() and not (tmp_path / "out" / "failed.json").exists()
    rows = jointobj_main(["eval", "--model", "out", "--toyset", f"{sets_module}:dates,{sets_module}:rings",
                          "--decoder", "l2r", "--tokens-per-step", "1", "--samples", "8", "--json", "model.json"])
    assert [r["toyset"] for r in rows] == ["dates", "rings"]
    (tmp_path / "out" / "report.json").unlink()
    rows = jointobj_main(["report", "out", "--samples", "4"])
    assert {row["toyset"] for row in rows} == {"rings", "dates"} and (tmp_path / "out" / "report.json").exists()

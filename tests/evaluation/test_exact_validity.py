"""support_mass: a decoder's exact mass on a toy set's support, against brute force and against its own samples."""

import math

import pytest
import torch

from jointobj.decoding import ConfidenceTopK, UnmaskingSampler
from jointobj.decoding.decoder_law import DecoderOrder
from jointobj.evaluation.exact_validity import explain_fall, first_step, support_mass
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser


def test_one_step_mass_is_the_product_of_marginals_summed_over_the_support():
    # All at once, every decoder samples each position from the fully masked state's marginals: the mass on
    # the support is sum over the support of the product of those marginals, computed here by hand.
    toyset = load_toyset("likes_tennis")
    oracle = OracleDenoiser(toyset)
    (row,) = support_mass(oracle, toyset, ["confidence:tokens_per_step=3"])
    expected = 0.0
    for p, prompt_prob in enumerate(toyset.prompt_probs.tolist()):
        answers = toyset.answers[p]  # [S, la]
        marginals = [torch.bincount(answers[:, i], weights=toyset.answer_probs[p].double(),
                                    minlength=int(answers.max()) + 1) for i in range(answers.shape[1])]
        expected += prompt_prob * sum(math.prod(float(marginals[i][a[i]]) for i in range(len(a))) for a in answers)
    assert row["mass"] == pytest.approx(expected, abs=1e-5)
    assert row["mass"] < 0.5  # the trap: most of the one-step mass is off the support


def test_one_token_per_step_under_the_oracle_is_the_chain_rule():
    toyset = load_toyset("latin_square_3")
    (row,) = support_mass(OracleDenoiser(toyset), toyset, ["confidence:tokens_per_step=1"])
    assert row["mass"] == pytest.approx(1.0, abs=1e-5)
    assert row["nll_nats"] == pytest.approx(toyset.entropy(), abs=1e-4)


def test_matches_the_frequency_of_valid_samples_from_the_decoder():
    # Two tokens per step on latin_square_3 under the oracle: the decoder's validity is neither 0 nor 1, and
    # every valid square is in the support, so the exact mass is the validity the sampler shows.
    toyset = load_toyset("latin_square_3")
    oracle = OracleDenoiser(toyset)
    (row,) = support_mass(oracle, toyset, ["confidence:tokens_per_step=2"])
    n = 4000
    prompts = toyset.prompts[0].expand(n, -1)
    out = UnmaskingSampler(ConfidenceTopK(), tokens_per_step=2).sample(
        oracle, prompts, gen_length=toyset.answer_length, generator=torch.Generator().manual_seed(0))
    frequency = float(toyset.is_valid(prompts, out.gen_ids).double().mean())
    se = math.sqrt(row["mass"] * (1 - row["mass"]) / n)
    assert 0.2 < row["mass"] < 0.9
    assert abs(frequency - row["mass"]) < 4 * se  # 4 standard errors of n samples: fails ~1 run in 16,000


def test_sums_over_prompts_with_their_probabilities():
    # shuffle_3 has one prompt per item set: unweighted, the chain rule's mass would be the number of prompts.
    toyset = load_toyset("shuffle_3")
    assert len(toyset.prompts) > 1
    rows = support_mass(OracleDenoiser(toyset), toyset, ["confidence:tokens_per_step=1", "l2r:tokens_per_step=3"])
    assert [r["decoder"] for r in rows] == ["confidence:tokens_per_step=1", "l2r:tokens_per_step=3"]
    assert rows[0]["mass"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < rows[1]["mass"] < 0.9  # all three at once: mostly off the support


def test_the_script_forces_each_first_position_and_agrees_with_the_decoder_where_it_would_start(tmp_path,
                                                                                                tiny_model_dir):
    import json

    from helpers import load_script

    out = tmp_path / "exact.json"
    load_script("eval/exact_validity.py").main([
        "--models", f"tiny={tiny_model_dir}", "--toyset", "latin_square_2", "--json", str(out), "--first-cells",
        "--decoders", "confidence:tokens_per_step=1,confidence:tokens_per_step=2"])
    rows = json.loads(out.read_text())["rows"]
    one, two = rows
    assert len(one["first_positions"]) == 1 and len(two["first_positions"]) == 2
    assert len(one["mass_by_first_position"]) == 4 and "mass_by_first_position" not in two
    # Forced to where the decoder starts anyway, the law is the decoder's own: the same mass.
    assert one["mass_by_first_position"][one["first_positions"][0]] == pytest.approx(one["mass"], rel=1e-6)
    assert one["first_margin"] > 0


class Tilted(torch.nn.Module):
    """The oracle, with one answer position made a little more confident at the fully masked answer only: a
    model whose confidence decoder starts there, and is exact from the second step on."""

    def __init__(self, toyset, position: int, tilt: float = 0.05):
        super().__init__()
        self.oracle, self.position, self.tilt = OracleDenoiser(toyset), position, tilt
        self.mask_token_id, self.prompt_length = self.oracle.mask_token_id, toyset.prompt_length
        self.symbol = int(toyset.answers[0][0, position])

    @property
    def device(self):
        return self.oracle.device

    def forward(self, input_ids, attention_mask=None):
        logits = self.oracle(input_ids, attention_mask).clone()  # [b, l, V]
        start = (input_ids[:, self.prompt_length:] == self.mask_token_id).all(1)  # [b]
        logits[start, self.prompt_length + self.position, self.symbol] += self.tilt
        return logits


def test_a_fall_from_a_moved_first_step_is_named_as_a_flipped_near_tie():
    toyset = load_toyset("latin_square_3")
    base, tuned = Tilted(toyset, 4), Tilted(toyset, 7)
    note = explain_fall(base, tuned, toyset, "confidence:tokens_per_step=1")
    assert note.startswith("exact 1.000 -> 1.000")  # exact from the second step on: every path is valid
    assert "first step moved from positions [4] to [7]" in note and "--first-cells" in note
    assert first_step(base, toyset, "confidence")[1] > 0  # its margin over the other cells
    same = explain_fall(base, Tilted(toyset, 4), toyset, "confidence:tokens_per_step=1")
    assert same == "exact 1.000 -> 1.000"  # the same first step: nothing to name


def test_the_report_explains_only_settings_whose_law_is_exact():
    from jointobj.evaluation.run_report import decoder_law_of, fall_note

    confidence = {"decoder": "confidence", "requested_tokens_per_step": 1, "options": {}}
    assert str(decoder_law_of(confidence)) == str(DecoderOrder.parse("confidence:tokens_per_step=1"))
    assert decoder_law_of({"decoder": "confidence", "requested_tokens_per_step": "all", "options": {}}) is not None
    for other in ({"decoder": "random", "requested_tokens_per_step": 1, "options": {}},
                  {"decoder": "speculative", "requested_tokens_per_step": 1, "options": {"drafts": 1}},
                  {"decoder": "confidence", "requested_tokens_per_step": 1, "options": {"temperature": 0.5}}):
        assert decoder_law_of(other) is None
    toyset = load_toyset("latin_square_3")
    models = {"base": Tilted(toyset, 4), "fine-tuned": Tilted(toyset, 7)}
    line = {"toyset": "latin_square_3", "law": decoder_law_of(confidence)}
    assert "moved from positions [4] to [7]" in fall_note(line, models)
    assert fall_note({**line, "law": None}, models) == ""


def test_a_note_that_cannot_be_computed_does_not_stop_the_report():
    from jointobj.evaluation.run_report import decoder_law_of, fall_note

    class Broken(Tilted):
        def forward(self, input_ids, attention_mask=None):
            raise RuntimeError("out of memory")

    toyset = load_toyset("latin_square_3")
    line = {"toyset": "latin_square_3",
            "law": decoder_law_of({"decoder": "confidence", "requested_tokens_per_step": 1, "options": {}})}
    assert fall_note(line, {"base": Broken(toyset, 4), "fine-tuned": Tilted(toyset, 7)}) == \
        " (no exact figures: out of memory)"

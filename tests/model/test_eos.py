"""EOS: every decoder takes `eos_token_id` (default: the denoiser's), answers are trimmed at the
first EOS for text and validity, and the cost counts say how the EOS tail counts."""

import types

import pytest
import torch
from torch import nn

from jointobj.decoding import build_decoder
from jointobj.decoding.sampler import SampleOutput, fill_settled_answers, resolve_eos, trim_at_eos
from jointobj.evaluation.sweep import evaluate
from jointobj.toysets.builtin import toy_tokenizer
from jointobj.toysets.oracle import OracleDenoiser

VOCAB, MASK, EOS = 8, 1, 7


class EndsEarly(nn.Module):
    """Logits that favour token 2 + position at the first two answer positions and EOS after,
    whatever the context (a model that learnt to stop after two tokens)."""

    mask_token_id, max_positions, vocab_size = MASK, 16, VOCAB

    def __init__(self, eos_token_id=EOS, scale: float = 5.0):
        super().__init__()
        self.eos_token_id = eos_token_id
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, input_ids, attention_mask=None):
        b, length = input_ids.shape
        favourite = torch.full((length,), EOS)
        favourite[length - 4 : length - 2] = torch.tensor([2, 3])  # answers of 4 after any prompt of lp
        return self.scale * nn.functional.one_hot(favourite, VOCAB).float().expand(b, length, VOCAB)


def test_trim_at_eos_sets_everything_after_the_first_eos_to_eos():
    gen = torch.tensor([[2, 7, 3, 7, 4], [2, 3, 4, 5, 6], [7, 2, 2, 2, 2]])
    assert trim_at_eos(gen, 7).tolist() == [[2, 7, 7, 7, 7], [2, 3, 4, 5, 6], [7, 7, 7, 7, 7]]
    assert torch.equal(trim_at_eos(gen, None), gen)


def output(gen: torch.Tensor, eos, row_steps) -> SampleOutput:
    ids = torch.cat([torch.full((len(gen), 2), 5), gen], 1)
    return SampleOutput(ids, 2, int(max(row_steps)), torch.tensor(row_steps), 1.0,
                        torch.zeros(len(gen), dtype=torch.float64), eos_token_id=eos)


def test_sample_output_trims_answers_and_counts_the_eos_tail_in_tokens_per_step_only():
    # Row 0: 2 answer tokens then EOS and its tail; row 1: no EOS. tokens_per_step counts all 5
    # positions of both rows; answer_tokens_per_step counts 2 + EOS and 5: (3 + 5) / 2 rows over 2 steps.
    out = output(torch.tensor([[2, 3, 7, 4, 7], [2, 3, 4, 5, 6]]), EOS, [2, 2])
    assert out.answer_ids.tolist() == [[2, 3, 7, 7, 7], [2, 3, 4, 5, 6]]
    assert out.answer_lengths.tolist() == [2, 5]
    assert out.tokens_per_step == 5 / 2
    assert out.answer_tokens_per_step == pytest.approx((3 + 5) / 2 / 2)
    plain = output(torch.tensor([[2, 3, 7, 4, 7]]), None, [1])
    assert torch.equal(plain.answer_ids, plain.gen_ids) and plain.answer_lengths.tolist() == [5]


def test_texts_stop_before_the_first_eos():
    tokenizer = toy_tokenizer()
    words = tokenizer.convert_tokens_to_ids(["he", "likes", "apple"])
    gen = torch.tensor([[words[0], words[1], EOS, words[2]], words[:2] + [words[2], words[2]]])
    texts = output(gen, EOS, [1, 1]).texts(tokenizer)
    assert texts[0] == tokenizer.decode(words[:2]) and "apple" not in texts[0]
    assert texts[1] == tokenizer.decode(gen[1].tolist())


@pytest.mark.parametrize("name, options", [("confidence", {}), ("threshold", {}), ("l2r", {"steps": 2}),
                                           ("random", {"rescore": "best:self:l2r:all,2"}),
                                           ("random", {"rescore": "best:self:l2r:all,2,step"})])
def test_every_decoder_takes_eos_from_the_denoiser_or_the_call(name, options):
    # Fails if a decoder drops the EOS (answers untrimmed) or ignores the explicit one.
    decoder = build_decoder(name, None if "steps" in options else 2, temperature=0, **options)
    prompt = torch.full((3, 2), 4)
    out = decoder.sample(EndsEarly(), prompt, 4, torch.Generator().manual_seed(0))
    assert out.eos_token_id == EOS and out.gen_ids.tolist() == [[2, 3, 7, 7]] * 3
    assert out.answer_lengths.tolist() == [2, 2, 2]
    other = decoder.sample(EndsEarly(), prompt, 4, torch.Generator().manual_seed(0), eos_token_id=3)
    assert other.eos_token_id == 3 and other.answer_ids.tolist() == [[2, 3, 3, 3]] * 3
    none = decoder.sample(EndsEarly(eos_token_id=None), prompt, 4, torch.Generator().manual_seed(0))
    assert none.eos_token_id is None and none.answer_lengths.tolist() == [4, 4, 4]


def test_the_soft_decoder_takes_eos():
    from jointobj import Denoiser
    from jointobj.model.tiny import tiny_masked_lm

    denoiser = Denoiser(tiny_masked_lm("bert", vocab_size=VOCAB, max_positions=16, seed=0), mask_token_id=MASK)
    out = build_decoder("soft", 1).sample(denoiser, torch.full((2, 2), 4), 4, torch.Generator().manual_seed(0),
                                          eos_token_id=EOS)
    assert out.eos_token_id == EOS and torch.equal(out.answer_ids, trim_at_eos(out.gen_ids, EOS))


@pytest.mark.parametrize("eos, message", [(MASK, "is the mask token id"), (VOCAB, r"token id in 0\.\.7"),
                                          (-1, "token id"), (2.0, "token id"), (True, "token id")])
def test_a_bad_eos_id_is_refused(eos, message):
    with pytest.raises(ValueError, match=message):
        resolve_eos(types.SimpleNamespace(mask_token_id=MASK, vocab_size=VOCAB), eos)


def test_validity_is_read_from_trimmed_answers():
    # The oracle always writes a full valid answer; an EOS id equal to the answers' first token trims
    # every answer to nothing, so validity falls from 1 to 0 -- fails if evaluate reads untrimmed ids.
    oracle = OracleDenoiser("likes_tennis")
    kept = evaluate(oracle, ["likes_tennis"], ["l2r"], [1], samples=20)[0]
    assert kept["validity"] == 1.0
    first_tokens = {int(a[0]) for a in oracle.toysets[next(iter(oracle.toysets))].answers[0]}
    oracle.eos_token_id = min(first_tokens)
    trimmed = evaluate(oracle, ["likes_tennis"], ["l2r"], [1], samples=200)[0]
    assert 0.0 < trimmed["validity"] < 1.0  # the answers that start with the EOS id are no longer valid


# ---------------------------------------------------------------- stopping at EOS


def test_only_settled_answers_are_filled_with_eos():
    m = MASK
    gen = torch.tensor([[2, EOS, m, m], [m, EOS, m, 3], [2, 3, m, m], [2, EOS, 3, m], [EOS, m, EOS, m]])
    assert fill_settled_answers(gen, MASK, EOS).tolist() == [
        [2, EOS, EOS, EOS], [m, EOS, m, 3], [2, 3, m, m], [2, EOS, 3, EOS], [EOS, EOS, EOS, EOS]]


def test_stop_at_eos_keeps_the_greedy_answer_and_spends_fewer_forwards():
    prompt = torch.full((3, 2), 4)
    plain = build_decoder("l2r", 1, temperature=0).sample(EndsEarly(), prompt, 4)
    stops = build_decoder("l2r", 1, temperature=0, stop_at_eos=True).sample(EndsEarly(), prompt, 4, return_trace=True)
    assert torch.equal(stops.answer_ids, plain.answer_ids) and plain.gen_ids.tolist() == [[2, 3, EOS, EOS]] * 3
    assert plain.steps == 4 and stops.steps == 3 and (stops.row_steps == 3).all()
    assert stops.commit_step[:, 3].tolist() == [-1] * 3  # filled, not drawn
    assert stops.answer_tokens_per_step == 1.0 and "stop_at_eos=True" in repr(build_decoder("l2r", stop_at_eos=True))


@pytest.mark.slow
def test_stop_at_eos_leaves_the_law_of_the_trimmed_answers_unchanged():
    # Random order at T = 1: the EOS is often committed before positions left of it; stopping then
    # (or filling those with EOS) would shorten answers. Frequencies of trimmed answers with and
    # without stopping agree within 4.5 standard errors of their difference (n samples each).
    n, prompt = 20_000, torch.full((20_000, 2), 4)
    model = EndsEarly(scale=1.0)
    runs = [build_decoder("random", 1, stop_at_eos=stop).sample(model, prompt, 4, torch.Generator().manual_seed(seed))
            for stop, seed in ((False, 0), (True, 1))]
    assert runs[1].rows_per_sample < runs[0].rows_per_sample  # settled rows left the forwards
    both = torch.cat([run.answer_ids for run in runs])  # [2n, L]
    answers, inverse = torch.unique(both, dim=0, return_inverse=True)
    counts = torch.stack([torch.bincount(part, minlength=len(answers)) for part in inverse.split(n)]).double() / n
    p = counts.mean(0)  # [A] pooled frequency
    tolerance = 4.5 * (2 * p * (1 - p) / n).sqrt() + 1e-12
    assert ((counts[0] - counts[1]).abs() <= tolerance).all()

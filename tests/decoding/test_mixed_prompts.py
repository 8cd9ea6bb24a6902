"""Prompts of different lengths in one batch: every decoder gives each row exactly what it gives
that row alone (T = 0), on models that honour attention masks (BERT: absolute positions;
ModernBERT: rotary), and a mask-blind model never sees two lengths in one forward."""

import warnings

import pytest
import torch
from torch import nn

from jointobj import Denoiser
from jointobj.decoding import POLICIES, build_decoder
from jointobj.decoding.layout import AnswerLayout, normalise_prompts
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

from remote_models import save_remote_model

VOCAB, MASK, PAD = 12, 1, 0
LENGTHS = [1, 4, 2, 4]  # prompt lengths of one batch
GEN = 5


def prompts(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (n,), generator=generator) for n in LENGTHS]


def padded(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, P] padded with PAD on `side`, and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


def denoiser_of(architecture: str) -> Denoiser:
    model = tiny_masked_lm(architecture, vocab_size=VOCAB, max_positions=16, pad_token_id=PAD, seed=3)
    return Denoiser(model.eval(), mask_token_id=MASK)


def alone(decoder, denoiser, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    return [decoder.sample(denoiser, row[None], GEN, torch.Generator().manual_seed(0)).gen_ids[0] for row in rows]


def assert_rows_as_alone(decoder, denoiser, rows) -> None:
    expected = alone(decoder, denoiser, rows)
    ids, mask = padded(rows, "left")
    outputs = [decoder.sample(denoiser, ids, GEN, torch.Generator().manual_seed(0), prompt_attention_mask=mask),
               decoder.sample(denoiser, *padded(rows, "right")[:1], GEN, torch.Generator().manual_seed(0),
                              prompt_attention_mask=padded(rows, "right")[1]),
               decoder.sample(denoiser, rows, GEN, torch.Generator().manual_seed(0))]
    for out in outputs:
        assert out.prompt_lengths.tolist() == LENGTHS
        for i, row in enumerate(rows):
            assert torch.equal(out.gen_ids[i], expected[i]), (decoder.name, i, out.gen_ids[i], expected[i])
            assert torch.equal(out.ids[i, : len(row)], row)  # each row's prompt from position 0
        assert out.attention_mask.sum(1).tolist() == [n + GEN for n in LENGTHS]


# ---------------------------------------------------------------- models that honour attention masks


@pytest.mark.parametrize("architecture", ["bert", "modernbert"])
@pytest.mark.parametrize("embeds", [False, True])
def test_answer_logits_of_a_mixed_batch_are_each_rows_own(architecture, embeds):
    # The one forward every decoder runs: each row's answer logits as when it runs alone, to float
    # precision. Fails if padding leaks into real positions (no attention mask), or if positions shift.
    denoiser, rows = denoiser_of(architecture), prompts(9)
    gen = torch.randint(2, VOCAB, (len(rows), GEN), generator=torch.Generator().manual_seed(0))
    gen[:, ::2] = MASK  # a half-decoded answer

    def logits(layout, answers):
        x = layout.compose(answers)
        if embeds:
            return layout.answer_logits(denoiser, inputs_embeds=denoiser.embed(x))
        return layout.answer_logits(denoiser, input_ids=x)

    with torch.no_grad():
        ids, mask = padded(rows, "left")
        mixed = logits(AnswerLayout.build(denoiser, ids, GEN, mask), gen)  # [b, L, V]
        for i, row in enumerate(rows):
            single = logits(AnswerLayout.build(denoiser, row[None], GEN), gen[i : i + 1])[0]
            torch.testing.assert_close(mixed[i], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blind", [False, True])
def test_answer_logits_at_chosen_columns_are_the_full_logits_gathered(blind):
    # The speculative decoder reads only the columns a round can use; fails if the lean path (positions=)
    # or the plain / one-forward-per-length path maps a column to another position's logits.
    denoiser, rows = denoiser_of("modernbert"), prompts(9)
    denoiser = IgnoresAttentionMask(denoiser) if blind else denoiser
    gen = torch.randint(2, VOCAB, (len(rows), GEN), generator=torch.Generator().manual_seed(0))
    gen[:, ::2] = MASK
    columns = torch.tensor([[4, 0, 0], [1, 2, 3], [2, 2, 4], [0, 4, 1]])  # [b, 3], repeats allowed
    with torch.no_grad():
        ids, mask = padded(rows, "left")
        layout = AnswerLayout.build(denoiser, rows, GEN) if blind else AnswerLayout.build(denoiser, ids, GEN, mask)
        full = layout.answer_logits(denoiser, input_ids=layout.compose(gen))  # [b, L, V]
        picked = layout.answer_logits(denoiser, input_ids=layout.compose(gen), columns=columns)  # [b, 3, V]
    torch.testing.assert_close(picked, full.gather(1, columns[..., None].expand(-1, -1, full.shape[-1])))


@pytest.mark.parametrize("architecture", ["bert", "modernbert"])
@pytest.mark.parametrize("name, options", [("speculative", {"drafts": 2}), ("speculative", {"draft_length": 2}),
                                           ("revisable", {"threshold": 0.3})])
def test_speculative_and_revisable_give_each_row_what_they_give_it_alone(architecture, name, options):
    assert_rows_as_alone(build_decoder(name, temperature=0, **options), denoiser_of(architecture), prompts(4))


@pytest.mark.parametrize("architecture", ["bert", "modernbert"])
@pytest.mark.parametrize("name", POLICIES.names())
def test_every_policy_gives_each_row_what_it_gives_it_alone(architecture, name):
    # Fails if prompts were left-padded inside (BERT's absolute positions shift), if the answer
    # were read at the wrong columns, or if the padding leaked into real positions.
    assert_rows_as_alone(build_decoder(name, 2, temperature=0), denoiser_of(architecture), prompts(1))


def test_steps_and_blocks_keep_rows_as_alone():
    decoder = build_decoder("confidence", temperature=0, steps=2, block_length=3)
    assert_rows_as_alone(decoder, denoiser_of("bert"), prompts(2))


def test_the_soft_decoder_gives_each_row_what_it_gives_it_alone():
    # Soft states are mixed into the answer positions' embeddings; fails if they land on prompt or padding.
    decoder = build_decoder("soft", 1, temperature=0, mixing=1.0, threshold=0.5)
    assert_rows_as_alone(decoder, denoiser_of("bert"), prompts(3))


@pytest.mark.parametrize("rescore", ["best:self:l2r:all,2", "sir:self:l2r:2,2,step", "best:self:l2r:all,2,fused",
                                     "best:self:l2r:all,2,loop"])
def test_rescorers_give_each_row_what_they_give_it_alone(rescore):
    decoder = build_decoder("confidence", 2, temperature=0, rescore=rescore)
    assert_rows_as_alone(decoder, denoiser_of("bert"), prompts(4))


def test_end_of_loop_energies_of_a_mixed_batch_are_each_rows_own():
    # The candidates' self energies read through the attention mask: the same numbers as alone.
    denoiser, rows = denoiser_of("bert"), prompts(5)
    decoder = build_decoder("random", 2, rescore="best:self:l2r:all,3")
    ids, mask = padded(rows, "left")
    mixed = decoder.sample(denoiser, ids, GEN, torch.Generator().manual_seed(0), prompt_attention_mask=mask)
    for i, row in enumerate(rows):
        single = decoder.sample(denoiser, row[None], GEN, torch.Generator().manual_seed(0))
        if torch.equal(single.candidates[0], mixed.candidates[i]):  # T = 1: compare where the draws agree
            torch.testing.assert_close(mixed.energy[i], single.energy[0], atol=1e-4, rtol=1e-5)
    assert mixed.energy.shape == (len(rows), 3) and torch.isfinite(mixed.energy).all()


def test_the_oracle_decodes_sets_of_different_prompt_lengths_in_one_batch():
    # Two toy sets with different prompt lengths, one oracle, one batch: every answer valid at one token a step.
    sets = [load_toyset("likes_tennis"), load_toyset("shuffle_3")]
    assert sets[0].prompt_length != sets[1].prompt_length and sets[0].answer_length == sets[1].answer_length
    oracle = OracleDenoiser(*sets)
    rows = [s.prompts[0] for s in sets for _ in range(50)]
    out = build_decoder("random", 1).sample(oracle, rows, sets[0].answer_length, torch.Generator().manual_seed(0))
    for k, toyset in enumerate(sets):
        part = slice(50 * k, 50 * (k + 1))
        assert toyset.is_valid(torch.stack(rows[part]), out.gen_ids[part]).all()


# ---------------------------------------------------------------- mask-blind models


class IgnoresAttentionMask(nn.Module):
    """A BERT denoiser that attends to padding (drops the attention mask), flagged mask_blind as the
    Denoiser's probe would flag it; records the real length of every row of every forward."""

    def __init__(self, denoiser: Denoiser, mask_blind: bool = True):
        super().__init__()
        self.inner, self.mask_token_id, self.mask_blind = denoiser, MASK, mask_blind
        self.widths = []

    @property
    def input_embeddings(self):
        return self.inner.input_embeddings

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        x = input_ids if input_ids is not None else inputs_embeds
        real = {x.shape[1]} if attention_mask is None else set(attention_mask.sum(1).tolist())
        self.widths.append(x.shape[1] if real == {x.shape[1]} else sorted(real))  # a list: padded rows
        return self.inner(input_ids=input_ids, inputs_embeds=inputs_embeds)  # padding visible to every position


@pytest.mark.parametrize("name, options", [("confidence", {}), ("threshold", {}), ("soft", {"threshold": 0.5}),
                                           ("l2r", {"rescore": "best:self:l2r:all,2"}),
                                           ("random", {"rescore": "best:self:l2r:all,2,fused"}),
                                           ("speculative", {"tokens_per_step": None, "drafts": 2})])
def test_a_mask_blind_model_runs_each_prompt_length_in_its_own_forward(name, options):
    # Every forward holds one length, unpadded: each row gets exactly its result alone. The premise is
    # checked too: padding moves this model's logits (a shared padded forward would be wrong).
    rows = prompts(6)
    decoder = build_decoder(name, **{"tokens_per_step": 2, **options}, temperature=0)
    blind = IgnoresAttentionMask(denoiser_of("bert"))
    expected = alone(decoder, blind, rows)
    blind.widths.clear()
    out = decoder.sample(blind, rows, GEN, torch.Generator().manual_seed(0))
    assert all(isinstance(width, int) for width in blind.widths), blind.widths  # no forward had padding
    assert set(blind.widths) <= {n + GEN for n in LENGTHS} and len(set(blind.widths)) > 1
    assert all(torch.equal(out.gen_ids[i], expected[i]) for i in range(len(rows)))
    short = torch.cat([rows[0], torch.full((GEN,), MASK)])[None]  # [1, n+L]
    with torch.no_grad():
        padded_logits = blind(input_ids=torch.cat([short, torch.full((1, 3), PAD)], 1))[:, : short.shape[1]]
        assert not torch.allclose(padded_logits, blind(input_ids=short), atol=1e-3)  # padding moves its logits


def test_a_mask_blind_models_groups_count_as_one_sequential_step():
    rows = prompts(7)
    blind = IgnoresAttentionMask(denoiser_of("bert"))
    out = build_decoder("confidence", 1).sample(blind, rows, GEN, torch.Generator().manual_seed(0))
    assert out.steps == GEN and (out.row_steps == GEN).all()
    assert len(blind.widths) == GEN * len(set(LENGTHS)) and out.rows_per_sample == GEN


@pytest.mark.parametrize("kind", ["dream_style", "llada_style"])
def test_remote_code_models_decode_mixed_lengths_as_each_row_alone(kind, tmp_path):
    # Dream-style: shifted logits and the mask handed to SDPA (a bool mask); LLaDA-style: no attention
    # mask at all, found mask-blind by the Denoiser's probe, so its rows run one length per forward.
    # The Denoiser warns whenever a mask-blind model gets a padded batch: no warning may appear.
    denoiser = Denoiser.from_pretrained(save_remote_model(kind, tmp_path), trust_remote_code=True).eval()
    assert denoiser.mask_blind == (kind == "llada_style")
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(4, denoiser.vocab_size, (n,), generator=generator) for n in (2, 5, 3)]
    for name, k in (("confidence", 2), ("soft", 2), ("speculative", None)):
        decoder = build_decoder(name, k, temperature=0)
        expected = [decoder.sample(denoiser, row[None], 4).gen_ids[0] for row in rows]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = decoder.sample(denoiser, rows, 4)
        assert all(torch.equal(out.gen_ids[i], expected[i]) for i in range(len(rows))), name


# ---------------------------------------------------------------- the layout and bad input


def test_layout_puts_each_answer_after_its_own_prompt():
    ids, mask = padded(prompts(8), "left")
    layout = AnswerLayout.build(denoiser_of("bert"), ids, 3, mask)
    gen = torch.arange(len(LENGTHS) * 3).view(-1, 3) + 100
    composed = layout.compose(gen)  # [b, P+3]
    for i, n in enumerate(LENGTHS):
        assert composed[i, n : n + 3].tolist() == gen[i].tolist()
        assert (composed[i, n + 3 :] == PAD).all()
    assert layout.answer_mask().sum(1).tolist() == [3] * len(LENGTHS)


@pytest.mark.parametrize("mask, message", [
    (torch.tensor([[1, 0, 1], [1, 1, 1]]), "row 0 of prompt_attention_mask has gaps"),
    (torch.tensor([[1, 1], [1, 1]]), r"must be \[batch, prompt_length\] = \(2, 3\)"),
    (torch.tensor([[1, 2, 1], [1, 1, 1]]), "of 0/1"),
])
def test_bad_prompt_masks_are_refused(mask, message):
    with pytest.raises(ValueError, match=message):
        normalise_prompts(torch.full((2, 3), 4), mask)


def test_a_list_of_prompts_takes_no_mask_and_a_list_of_lists_is_refused():
    decoder, denoiser = build_decoder("random", 1), denoiser_of("bert")
    with pytest.raises(ValueError, match="a list of 1-D prompts needs none"):
        decoder.sample(denoiser, prompts(), GEN, prompt_attention_mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"\[batch, prompt_length\].*list of 1-D tensors"):
        decoder.sample(denoiser, [[2, 3], [4]], GEN)


def test_the_longest_prompt_sets_the_position_limit():
    rows = [torch.tensor([2, 3]), torch.arange(2, 14)]  # 12 + 5 > 16 positions
    with pytest.raises(ValueError, match=r"prompt \(12\) \+ gen_length \(5\) = 17 tokens"):
        build_decoder("random", 1).sample(denoiser_of("bert"), rows, GEN)

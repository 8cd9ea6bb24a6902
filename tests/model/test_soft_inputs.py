"""soft_inputs: the one builder of (1 - a) E[MASK] + a sum_v s_v E[v], against hard lookups and a naive loop."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jointobj import Denoiser
from jointobj.model.soft_inputs import embedding_table, require_input_embeddings, soft_input_embeddings, soft_state
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.oracle import OracleDenoiser

from tiny_models import BidirectionalLM

VOCAB, MASK = 40, 1


class ScaledEmbedding(nn.Embedding):
    """Rows scaled inside forward (as Gemma's embeddings are): the weight alone is not what the model reads."""

    def forward(self, input_ids):
        return 3.0 * super().forward(input_ids)


def scaled_custom_model() -> nn.Module:
    model = BidirectionalLM(VOCAB)
    model.embed_tokens = ScaledEmbedding(VOCAB, 32)
    return model


BUILDERS = {
    "bert": lambda: tiny_masked_lm("bert", vocab_size=VOCAB, seed=0),
    "modernbert": lambda: tiny_masked_lm("modernbert", vocab_size=VOCAB, seed=0),
    "custom": lambda: (torch.manual_seed(0), BidirectionalLM(VOCAB))[1],
    "custom_scaled": lambda: (torch.manual_seed(0), scaled_custom_model())[1],
}


@functools.cache
def denoiser(architecture: str) -> Denoiser:
    return Denoiser(BUILDERS[architecture](), mask_token_id=MASK).eval()


def ids_and_soft(seed: int = 0, shape=(3, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, shape, generator=generator)  # [b, l]
    soft = torch.rand(shape, generator=generator) < 0.5  # [b, l]
    soft[0, 0] = True  # at least one soft position
    return ids, soft


@pytest.mark.parametrize("architecture", list(BUILDERS))
@torch.no_grad()
def test_one_hot_states_at_full_mixing_give_the_hard_logits(architecture):
    model = denoiser(architecture)
    ids, soft = ids_and_soft()
    state = F.one_hot(ids[soft], VOCAB).float()  # [n, V]
    embeds = soft_input_embeddings(model, ids, soft, state, mixing=1.0)
    torch.testing.assert_close(model(inputs_embeds=embeds), model(input_ids=ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["bert", "modernbert", "custom", "custom_scaled"])
@torch.no_grad()
def test_zero_mixing_is_the_plain_mask(architecture):
    model = denoiser(architecture)
    ids, soft = ids_and_soft(seed=1)
    state = torch.rand(int(soft.sum()), VOCAB).softmax(-1)  # any state: a = 0 ignores it
    embeds = soft_input_embeddings(model, ids, soft, state, mixing=0.0)
    masked = ids.masked_fill(soft, MASK)
    torch.testing.assert_close(model(inputs_embeds=embeds), model(input_ids=masked), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixing", [0.3, "per_position"])
@torch.no_grad()
def test_matches_a_naive_loop_over_positions(mixing):
    model = denoiser("custom_scaled")
    ids, soft = ids_and_soft(seed=2)
    n = int(soft.sum())
    state = torch.rand(n, VOCAB, generator=torch.Generator().manual_seed(3)).softmax(-1)
    a = torch.linspace(0, 1, n) if mixing == "per_position" else torch.full((n,), mixing)
    embeds = soft_input_embeddings(model, ids, soft, state, a if mixing == "per_position" else mixing)
    rows = model.input_embeddings(torch.arange(VOCAB))  # [V, d] through the module (scaled)
    k = 0
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            if soft[b, i]:
                expected = (1 - a[k]) * rows[MASK] + a[k] * sum(state[k, v] * rows[v] for v in range(VOCAB))
                k += 1
            else:
                expected = rows[ids[b, i]]
            torch.testing.assert_close(embeds[b, i], expected, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_the_embeddings_through_soft_rows_but_not_the_state():
    model = denoiser("custom")
    ids, soft = ids_and_soft(seed=4)
    ids = ids.clamp(min=MASK + 2)  # no hard row uses token MASK + 1 ...
    state = torch.zeros(int(soft.sum()), VOCAB).index_fill(1, torch.tensor([MASK + 1]), 1.0)
    model.zero_grad()
    soft_input_embeddings(model, ids, soft, state, 0.5).sum().backward()
    grad = model.input_embeddings.weight.grad  # ... so its gradient comes from the soft rows alone
    assert grad[MASK + 1].abs().sum() > 0 and grad[MASK].abs().sum() > 0
    assert state.grad is None


def test_plain_embedding_table_is_the_weight_itself():
    embedding = denoiser("bert").input_embeddings
    assert embedding_table(embedding) is embedding.weight
    scaled = denoiser("custom_scaled").input_embeddings
    torch.testing.assert_close(embedding_table(scaled), 3.0 * scaled.weight)


# ---------------------------------------------------------------- states


def test_state_excludes_the_mask_truncates_and_renormalises():
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    logits[:, MASK] = 10.0  # the most likely token, and still excluded
    state = soft_state(logits, MASK, temperature=0.7, top_k=3)
    assert (state[:, MASK] == 0).all()
    assert ((state > 0).sum(-1) == 3).all()
    torch.testing.assert_close(state.sum(-1), torch.ones(5))
    full = soft_state(logits, MASK, temperature=0.7)
    kept = full.topk(3, dim=-1)
    torch.testing.assert_close(state.gather(-1, kept.indices), kept.values / kept.values.sum(-1, keepdim=True))


def test_zero_temperature_state_is_the_one_hot_argmax():
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1))
    logits[:, MASK] = 99.0
    state = soft_state(logits, MASK, temperature=0.0)
    masked = logits.clone()
    masked[:, MASK] = -torch.inf
    assert torch.equal(state, F.one_hot(masked.argmax(-1), VOCAB).float())


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("mixing", [-0.1, 1.5, torch.tensor([0.5, 1.2])])
def test_mixing_outside_the_unit_interval_is_refused(mixing):
    ids, soft = ids_and_soft()
    with pytest.raises(ValueError, match=r"mixing weight a must lie in \[0, 1\]"):
        soft_input_embeddings(denoiser("custom"), ids, soft, torch.zeros(int(soft.sum()), VOCAB), mixing)


def test_the_oracle_has_no_input_embeddings_and_is_refused():
    with pytest.raises(TypeError, match="OracleDenoiser has no input embeddings.*hard decoder"):
        require_input_embeddings(OracleDenoiser("likes_tennis"))


def test_state_of_the_wrong_shape_is_refused():
    ids, soft = ids_and_soft()
    with pytest.raises(ValueError, match="state must be"):
        soft_input_embeddings(denoiser("custom"), ids, soft, torch.zeros(int(soft.sum()) + 1, VOCAB))


def test_top_k_below_one_is_refused():
    with pytest.raises(ValueError, match="top_k must be a whole number >= 1"):
        soft_state(torch.zeros(2, VOCAB), MASK, top_k=0)

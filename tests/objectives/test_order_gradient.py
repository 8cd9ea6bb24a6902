"""The order head's score-function gradient: Plackett-Luce draws at their law, and the leave-one-out
REINFORCE estimate unbiased against the exact gradient of E_order[log P_order(x)] by enumeration."""

import functools
import itertools
import math

import torch

from jointobj.decoding.decoder_law import DecoderOrder, decoder_blocks
from jointobj.diffusion.batch import answer_batch
from jointobj.model.order_head import OrderHead
from jointobj.objectives.order_gradient import draw_block, draw_orders, plackett_luce_log_prob

from tiny_models import sharp_denoiser

VOCAB, MASK, PROMPT_TOKEN, LENGTH = 4, 3, 2, 4


@functools.cache
def random_head() -> OrderHead:
    torch.manual_seed(5)
    head = OrderHead(VOCAB, LENGTH, width=4)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.7)
        head.log_scale.fill_(0.0)  # draws spread over many orders: every trajectory matters
    return head


def data_batch() -> dict:
    answers = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])  # [2, 4]
    return answer_batch(torch.full((2, 1), PROMPT_TOKEN), answers)


ORDER = DecoderOrder.parse("learned:steps=2")  # quotas 2, 2: 4 x 3 ordered first blocks, 2 x 1 second blocks


def test_plackett_luce_log_probs_sum_to_one_over_every_ordered_draw():
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.0]])
    eligible = torch.tensor([[True, True, False, True, True]])
    open_positions = [0, 1, 3, 4]
    total = sum(math.exp(float(plackett_luce_log_prob(scores, eligible, torch.tensor([list(r)]))))
                for r in itertools.permutations(open_positions, 2))
    assert abs(total - 1.0) < 1e-6
    padded = plackett_luce_log_prob(scores, eligible, torch.tensor([[3, -1]]))  # a quota of 1 in a q = 2 ranking
    assert abs(float(padded) - float(scores[0, 3] - scores[0, [0, 1, 3, 4]].logsumexp(0))) < 1e-6


def test_draws_come_at_their_plackett_luce_frequency():
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.5]]).expand(20000, 4)
    eligible = torch.tensor([[True, True, True, False]]).expand(20000, 4)
    ranking = draw_block(scores, eligible, torch.full((20000,), 2), torch.Generator().manual_seed(0))  # [N, 2]
    for pair in itertools.permutations([0, 1, 2], 2):
        law = math.exp(float(plackett_luce_log_prob(scores[:1], eligible[:1], torch.tensor([pair]))))
        frequency = float((ranking == torch.tensor(pair)).all(1).double().mean())
        assert abs(frequency - law) <= 4.5 * math.sqrt(law * (1 - law) / 20000) + 1e-9, (pair, frequency, law)
    assert not (ranking == 3).any()  # never an ineligible position


def forced(rankings: list[tuple[int, ...]], pieces: list):
    """A `choose` for decoder_blocks that takes the given ranking at each step (every row the same), recording
    its Plackett-Luce log-probability under the head (with grad)."""
    steps = iter(rankings)

    def choose(logits, eligible, quota, live):
        ranking = torch.tensor([next(steps)]).expand(len(live), -1)  # [a, q]
        with torch.enable_grad():
            pieces.append(plackett_luce_log_prob(random_head()(logits, eligible), eligible, ranking))
        commit = torch.zeros_like(eligible)
        commit.scatter_(1, ranking, True)
        return commit

    return choose


def exact_objective() -> torch.Tensor:
    """E over the Plackett-Luce draws of the data's log-likelihood along the drawn order, averaged over the
    batch's answers, summed over every ordered trajectory (4 x 3 x 2 x 1 = 24): grad flows to the head."""
    batch = data_batch()
    scorable = ~batch["prompt_mask"]
    total = 0.0
    for first in itertools.permutations(range(LENGTH), 2):
        for second in itertools.permutations([p for p in range(LENGTH) if p not in first]):
            pieces = []
            _, reward = decoder_blocks(sharp_denoiser(), batch, scorable, ORDER, choose=forced([first, second], pieces))
            probability = sum(pieces).exp()  # [2]
            total = total + (probability * reward.float()).mean()
    return total


def flat_grad(head: OrderHead) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in head.parameters()])


def test_the_leave_one_out_estimate_is_unbiased_against_enumeration():
    head = random_head()
    head.zero_grad()
    exact_objective().backward()
    exact = flat_grad(head).clone()  # [P]
    assert float(exact.abs().max()) > 0.05  # the order matters here: the check has teeth

    generator = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(400):  # 400 independent estimates, each from 4 draws per answer
        head.zero_grad()
        (-draw_orders(sharp_denoiser(), data_batch(), head, ORDER, samples=4, generator=generator).loss()).backward()
        estimates.append(flat_grad(head).clone())
    estimates = torch.stack(estimates)  # [400, P]
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    # 4.5 standard errors per coordinate (a few hundred coordinates: a false alarm has odds ~1e-3), plus 1e-5 for
    # float32 sums over 24 trajectories (a coordinate with no gradient, log_scale here, has se ~1e-8)
    assert ((mean - exact).abs() <= 4.5 * se + 1e-5).all(), float(((mean - exact).abs() / (se + 1e-5)).max())
    assert float(se.max()) < 0.5 * float(exact.abs().max())  # precise enough to see a biased estimator
    head.zero_grad()

"""Training the order head raises the decoder law's likelihood of the data: on the exact oracle of
latin_square_3 at 3 steps, from confidence's order (coupled cells in one step) to a planned-quality one."""

import pytest
import torch

from jointobj.decoding.decoder_law import DecoderOrder, decoder_log_likelihood
from jointobj.diffusion.batch import answer_batch
from jointobj.model.order_head import OrderHead
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.training.order_head import train_order_head


def test_training_raises_the_decoder_law_likelihood_of_the_data():
    toyset = load_toyset("latin_square_3")
    oracle = OracleDenoiser(toyset)
    oracle.order_head = OrderHead(oracle.vocab_size, toyset.answer_length, width=16)
    prompts, answers = toyset.sample(512, torch.Generator().manual_seed(0))
    held_out = answer_batch(*toyset.sample(256, torch.Generator().manual_seed(1)))
    order = DecoderOrder.parse("learned:steps=3")  # the head found on the model

    def loglik() -> float:
        with torch.no_grad():
            return float(decoder_log_likelihood(oracle, held_out, [order]).mean())

    before = loglik()
    assert abs(before - float(decoder_log_likelihood(oracle, held_out, ["confidence:steps=3"]).mean())) < 1e-6
    report = train_order_head(oracle, prompts, answers, order, steps=25, batch=16, samples=4, seed=0)
    after = loglik()
    # confidence: -5.38 nats per square; the best any order reaches at 3 steps is -log 27 = -3.30 (each of the
    # 12 squares gets at most (1/3)^3 from the first step's three independent uniform cells)
    assert before < -5.0 and after > -3.5, (before, after)
    assert report["steps"] == 25 and len(report["history"]) == 25


def test_a_model_without_a_head_is_refused():
    toyset = load_toyset("latin_square_3")
    prompts, answers = toyset.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no order head"):
        train_order_head(OracleDenoiser(toyset), prompts, answers, "learned:steps=3", steps=1)

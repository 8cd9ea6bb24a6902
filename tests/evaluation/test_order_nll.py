"""eval/order_nll.py, run in-process: on a tiny saved model, and on the exact oracle."""

import json

import pytest
import torch

from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

from helpers import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("eval/order_nll.py")


def test_script_writes_one_row_per_family_from_a_saved_model(script, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "nll.json"
    script.main(["--model", str(tiny_model_dir), "--toyset", "likes_tennis", "--json", str(out), "--samples", "16"])
    result = json.loads(out.read_text())
    assert [row["order"] for row in result["rows"]] == ["l2r", "r2l", "random", "logsum"]
    assert result["entropy_nats"] == pytest.approx(load_toyset("likes_tennis").entropy())
    for row in result["rows"]:
        # an untrained model is far from the data: cross-entropy above the entropy, by more than sampling error
        assert row["nll_nats"] - row["entropy_nats"] > 5 * row["se"] > 0
    assert "l2r" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["likes_tennis", "shuffle_3"])
def test_the_oracle_scores_every_order_at_the_exact_log_probability(script, name):
    # Under the exact denoiser every order's K = n likelihood is log p(answer | prompt), so each
    # family's mean NLL is the sample mean of -log p: this checks prompts, orders and blocks end to end.
    toyset = load_toyset(name)
    rows = script.order_nll(OracleDenoiser(toyset), toyset, samples=64, seed=3)
    prompts, answers = toyset.sample(64, torch.Generator().manual_seed(3))
    expected = float(-toyset.log_prob(prompts, answers).mean())
    for row in rows:
        assert row["nll_nats"] == pytest.approx(expected, abs=1e-4), row["order"]


def test_a_decoder_row_is_its_exact_law(script):
    # Under the oracle the one-token-per-step decoders are the chain rule (NLL = -log p), and a two-step
    # decoder puts mass off the support, so its NLL of the data is higher.
    toyset = load_toyset("agreement")
    rows = {r["order"]: r for r in script.order_nll(OracleDenoiser(toyset), toyset, samples=64, seed=3,
                                                    decoders=["confidence", "confidence:steps=2"])}
    assert rows["confidence"]["nll_nats"] == pytest.approx(rows["l2r"]["nll_nats"], abs=1e-4)
    assert rows["confidence:steps=2"]["nll_nats"] > rows["l2r"]["nll_nats"] + 0.5

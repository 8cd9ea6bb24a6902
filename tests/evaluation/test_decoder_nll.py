"""The sweep prints the decoder's own NLL of the set's answers beside validity."""

import math

from jointobj.evaluation.sweep import evaluate
from jointobj.toysets.oracle import OracleDenoiser

SAMPLES = 2000


def test_the_oracle_one_token_per_step_reaches_the_entropy_and_a_budget_pays_for_invalid_mass():
    rows = evaluate(OracleDenoiser("agreement"), ["agreement"], ["l2r", "confidence", "random"], [1], SAMPLES,
                    decoder_options={"confidence": {"steps": 2}}, decoder_nll=True)
    rows = {r["decoder"]: r for r in rows}
    assert math.isclose(rows["l2r"]["decoder_nll"], rows["l2r"]["entropy_nats"], abs_tol=1e-4)  # the exact law
    # agreement is uniform on its support, so the decoder's mass on valid answers is |support| exp(-NLL):
    # the probability that it decodes a valid answer, which its samples estimate.
    confidence = rows["confidence"]
    valid_mass = math.exp(rows["l2r"]["entropy_nats"] - confidence["decoder_nll"])
    assert abs(valid_mass - confidence["validity"]) < 4.5 * math.sqrt(valid_mass * (1 - valid_mass) / SAMPLES)
    assert valid_mass < 0.9
    assert rows["random"]["decoder_nll"] is None  # its law is a mixture over orders, not one likelihood


def test_it_is_off_unless_asked_for():
    row = evaluate(OracleDenoiser("agreement"), ["agreement"], ["l2r"], [1], 50)[0]
    assert row["decoder_nll"] is None and row["entropy_nats"] > 0

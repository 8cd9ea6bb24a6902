"""Decoders: unmasking policies, the hard-commit parallel sampler, soft-state decoding, energy
rescoring, and decoders by name."""

from jointobj.decoding.decoder_law import DecoderOrder, decoder_log_likelihood
from jointobj.decoding.layout import AnswerLayout
from jointobj.decoding.policies import (
    POLICIES,
    ConfidenceThreshold,
    ConfidenceTopK,
    EntropyBounded,
    EntropyTopK,
    LeftToRightTopK,
    MarginTopK,
    RandomTopK,
    UnmaskingPolicy,
)
from jointobj.decoding.registry import DECODERS, Decoder, build_decoder
from jointobj.decoding.rescore import (
    RESCORING,
    RescoredOutput,
    RescoreSpec,
    best_of_n,
    sampling_importance_resampling,
)
from jointobj.decoding.revisable import RevisableDecoder  # registers "revisable"
from jointobj.decoding.sampler import SampleOutput, UnmaskingSampler, gumbel_max, steps_for, trim_at_eos
from jointobj.decoding.soft import (  # registers "soft"
    MIXING_SCHEDULES,
    SYMMETRY_BREAKERS,
    SoftStateDecoder,
    SymmetryBreaker,
)
from jointobj.decoding.speculative import SpeculativeDecoder  # registers "speculative"

__all__ = [
    "DECODERS",
    "MIXING_SCHEDULES",
    "POLICIES",
    "RESCORING",
    "SYMMETRY_BREAKERS",
    "AnswerLayout",
    "ConfidenceThreshold",
    "ConfidenceTopK",
    "Decoder",
    "DecoderOrder",
    "EntropyBounded",
    "EntropyTopK",
    "LeftToRightTopK",
    "MarginTopK",
    "RandomTopK",
    "RescoreSpec",
    "RescoredOutput",
    "RevisableDecoder",
    "SampleOutput",
    "SoftStateDecoder",
    "SpeculativeDecoder",
    "SymmetryBreaker",
    "UnmaskingPolicy",
    "UnmaskingSampler",
    "best_of_n",
    "build_decoder",
    "decoder_log_likelihood",
    "gumbel_max",
    "sampling_importance_resampling",
    "steps_for",
    "trim_at_eos",
]

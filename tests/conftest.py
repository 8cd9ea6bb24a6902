"""Shared test setup: hypothesis profiles (derandomised under CI) and quiet transformers."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from transformers.utils import logging as hf_logging

settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

hf_logging.set_verbosity_error()
# Tiny models gain nothing from intra-op threads, and extra threads thrash when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained tiny ModernBERT over the toy vocabulary, saved once per session."""
    from helpers import save_tiny_toy_model

    return save_tiny_toy_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(autouse=True)
def _restore_accelerate_environment():
    """Each test starts with the ACCELERATE_* variables it found: transformers 4.x's TrainingArguments
    sets ACCELERATE_USE_DEEPSPEED and ACCELERATE_MIXED_PRECISION in os.environ and leaves them, so a
    DeepSpeed run in one test would turn DeepSpeed (in bf16) on for every later Trainer in the process."""
    before = {key: value for key, value in os.environ.items() if key.startswith("ACCELERATE_")}
    yield
    for key in [key for key in os.environ if key.startswith("ACCELERATE_")]:
        if key not in before:
            del os.environ[key]
    os.environ.update(before)

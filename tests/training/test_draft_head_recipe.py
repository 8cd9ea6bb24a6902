"""recipes/draft_head.py in-process on a trained tiny model: the head learns the model's own law, saves
beside the adapter and reloads with identical draft logits, and the frozen denoiser does not move.

The model is tests/training.py's tiny ModernBERT trained on likes_tennis (three words that agree:
the marginals of words 2 and 3 are near 50/50 while the conditionals are near certain, so marginal
drafts are often rejected and a joint draft need not be). The head is compared with a fresh one
(zero last layer: it drafts the marginals), on 512 held-out own samples.
"""

import math
from pathlib import Path

import pytest
import torch

from jointobj import Denoiser
from jointobj.decoding.speculative import SpeculativeDecoder
from jointobj.model.draft_head import find_draft_head
from jointobj.objectives.draft_distillation import distillation_targets, draft_loss, own_samples, uniform_cuts
from jointobj.toysets.builtin import load_toyset

from helpers import load_script
from training import train_token_ce

LENGTH = 3  # likes_tennis' answer tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("likes_tennis_model")
    train_token_ce("likes_tennis").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("draft_head_run") / "run"
    torch.manual_seed(123)  # whatever ran before: the recipe seeds itself from --seed
    result = load_script("recipes/draft_head.py").main(
        ["--model_name_or_path", str(model_dir), "--dataset", "likes_tennis", "--output_dir", str(output_dir),
         "--deepspeed", "", "--max_steps", "60", "--per_device_train_batch_size", "32", "--samples_per_toyset",
         "256", "--logging_steps", "10", "--save_strategy", "no", "--disable_tqdm", "true"])
    return result, output_dir


def _held_out(denoiser):
    prompts, _ = load_toyset("likes_tennis").sample(512, torch.Generator().manual_seed(99))
    answers = own_samples(denoiser, prompts, LENGTH, generator=torch.Generator().manual_seed(98))
    return prompts, answers


def _likelihood(denoiser, head, prompts, answers) -> float:
    """Mean log q(x) of the held-out own samples, the whole answer drafted from the first proposal."""
    cuts = torch.zeros(len(answers), dtype=torch.long)
    targets = distillation_targets(denoiser, prompts, answers, cuts=cuts)
    with torch.no_grad():
        logits = head.teacher_forced(targets.order_tokens, targets.order_positions, cuts, targets.order_tokens,
                                     targets.order_positions, targets.proposal)  # [b, L, V]
    return float(logits.log_softmax(-1).gather(2, targets.order_tokens[..., None]).sum((1, 2)).mean())


def _acceptance(denoiser, head, prompts, answers) -> float:
    cuts = uniform_cuts(len(answers), LENGTH, torch.Generator().manual_seed(0), "cpu")
    with torch.no_grad():
        return draft_loss(head, distillation_targets(denoiser, prompts, answers, cuts=cuts))[1]["acceptance"]


def _tokens_per_step(denoiser, prompts) -> float:
    out = SpeculativeDecoder(temperature=1.0, draft="head").sample(denoiser, prompts, LENGTH,
                                                                    torch.Generator().manual_seed(5))
    return out.tokens_per_step


def test_the_trained_head_drafts_the_models_own_samples_better_than_the_marginals(run):
    # Fails if the recipe leaves the head as attached (a fresh head drafts the marginals: equal figures).
    result, output_dir = run
    losses = [row["loss"] for row in result.trainer.state.log_history if "loss" in row]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    denoiser = Denoiser.from_pretrained(output_dir).eval()
    head = find_draft_head(denoiser)
    held_out = _held_out(denoiser)
    prompts = held_out[0]
    trained = (_likelihood(denoiser, head, *held_out), _acceptance(denoiser, head, *held_out),
               _tokens_per_step(denoiser, prompts))
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.zero_()  # a fresh head: the marginals
    fresh = (_likelihood(denoiser, head, *held_out), _acceptance(denoiser, head, *held_out),
             _tokens_per_step(denoiser, prompts))
    # Seen: log q -2.11 -> -0.86, acceptance 0.66 -> 0.96, tokens per step 1.18 -> 1.45 (a 3-token answer's
    # first marginal forward is a step: at most 3 / 2). On 512 samples the rate's standard error is below 0.03.
    assert trained[0] > fresh[0] + 0.3, (trained, fresh)
    assert 1 - trained[1] < 0.5 * (1 - fresh[1]), (trained, fresh)  # the expected rejection at least halves
    assert trained[2] > fresh[2] + 0.1, (trained, fresh)


def test_the_saved_head_reloads_with_identical_draft_logits_and_the_denoiser_stays_frozen(run, model_dir):
    # Fails if the head is not saved beside the adapter (a fresh one would be attached on load) or its
    # weights change on the way; or if the frozen adapter trained (the logits would move).
    result, output_dir = run
    assert (output_dir / "draft_head.safetensors").exists() and (output_dir / "adapter_model.safetensors").exists()
    reloaded = Denoiser.from_pretrained(output_dir).eval()
    trained = result.denoiser.eval()
    prompts, answers = _held_out(reloaded)
    cuts = uniform_cuts(len(answers), LENGTH, torch.Generator().manual_seed(1), "cpu")
    targets = distillation_targets(reloaded, prompts, answers, cuts=cuts)
    step = (cuts[:, None] + torch.arange(LENGTH)).clamp(max=LENGTH - 1)
    window = (targets.order_tokens.gather(1, step), targets.order_positions.gather(1, step),
              targets.proposal[torch.arange(len(targets))[:, None], step])
    with torch.no_grad():
        before = find_draft_head(trained).teacher_forced(targets.order_tokens, targets.order_positions, cuts, *window)
        after = find_draft_head(reloaded).teacher_forced(targets.order_tokens, targets.order_positions, cuts, *window)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert find_draft_head(reloaded).trained_on["objective"] == "draft_distillation"
    base = Denoiser.from_pretrained(model_dir).eval()
    ids = torch.cat([prompts[:8], torch.full((8, LENGTH), base.mask_token_id)], 1)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids), base(input_ids=ids), atol=0, rtol=0)

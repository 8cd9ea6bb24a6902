"""Remote code written for transformers 4.x (tests/remote_models' llada_legacy / dream_legacy, which
have the habits of LLaDA's and Dream's published code) on both transformers lines: it loads, trains
(LoRA, TokenCE and log-sum), decodes and round-trips its adapter; on 5.x through the rules of
jointobj/model/compat.py, each of which is shown to be needed by removing it."""

import json
import re

import pytest
import torch
import transformers
from peft import LoraConfig

from jointobj import Denoiser, DiffusionCollator, TokenCELoss
from jointobj.decoding import DECODERS, build_decoder
from jointobj.model import compat
from jointobj.model.compat import RemoteCodeLoadError
from jointobj.objectives.logsum import LogSumOrdersLoss
from jointobj.toysets.builtin import load_toyset

from remote_models import LEGACY_QUIRKS, remote_model, save_remote_model

FIVE = int(transformers.__version__.split(".")[0]) >= 5
KINDS = sorted(LEGACY_QUIRKS)
RULE_KIND = {rule: kind for kind, quirks in LEGACY_QUIRKS.items() for rule in quirks.values()}
IDS = torch.tensor([[3, 9, 2, 2, 14, 5, 2, 7]])  # 2 is the mask id


def load(directory, **kwargs) -> Denoiser:
    return Denoiser.from_pretrained(directory, trust_remote_code=True, **kwargs)


def reference_logits(kind: str) -> torch.Tensor:
    """The saved model's logits on IDS, from the model object itself (no loading involved)."""
    with torch.no_grad():
        return remote_model(kind).eval()(input_ids=IDS, use_cache=False).logits  # on 5.x its config lost use_cache


def without(monkeypatch, rule: str) -> None:
    """jointobj with one compatibility rule removed."""
    for group in ("CONFIG_RULES", "CLASS_RULES", "MODEL_RULES"):
        monkeypatch.setattr(compat, group, tuple(r for r in getattr(compat, group) if r.__name__ != rule))


@pytest.mark.parametrize("kind", KINDS)
def test_legacy_model_loads_with_its_own_logits_and_names_the_rules_applied(kind, tmp_path):
    # Fails on 5.x if a rule is missing or wrong (the load fails, or the logits differ from the model
    # that was saved: e.g. a rotary buffer left uninitialised), and on 4.57 if any rule fires at all.
    denoiser = load(save_remote_model(kind, tmp_path / kind)).eval()
    expected = set(LEGACY_QUIRKS[kind].values()) if FIVE else set()
    assert set(denoiser.compat_rules) == expected
    assert (f"compat_rules={list(denoiser.compat_rules)}" in repr(denoiser)) == FIVE
    with torch.no_grad():
        torch.testing.assert_close(denoiser.model(input_ids=IDS).logits, reference_logits(kind))
    assert type(denoiser.model).__name__ == type(remote_model(kind)).__name__  # the subclass keeps the name
    # The conventions are decided as for the 5.x-style models: Dream's shift, LLaDA's mask-blindness.
    assert denoiser.logit_shift == (1 if kind == "dream_legacy" else 0)
    assert denoiser.mask_blind == (kind == "llada_legacy")


@pytest.mark.skipif(not FIVE, reason="the rules answer transformers 5.x")
@pytest.mark.parametrize("rule", sorted(RULE_KIND))
def test_each_rule_is_needed_on_transformers_5(rule, monkeypatch, tmp_path):
    # What each rule's removal breaks (recorded in the issue notes): the test fails if a rule is dead code.
    directory = save_remote_model(RULE_KIND[rule], tmp_path / "model")
    without(monkeypatch, rule)
    if rule == "restore_use_cache":
        with pytest.raises(AttributeError, match="use_cache"):  # LLaDA's forward reads config.use_cache
            load(directory)
    elif rule in ("call_post_init", "accept_tie_weights_keywords", "default_rope_initialiser"):
        message = {"call_post_init": "all_tied_weights_keys", "accept_tie_weights_keywords": "tie_weights",
                   "default_rope_initialiser": "KeyError: 'default'"}[rule]
        with pytest.raises(RemoteCodeLoadError, match=re.escape(message)):
            load(directory)
    elif rule == "tied_weights_keys_as_mapping":
        denoiser = load(directory)  # loads; saving the full model reads the list as a mapping
        with pytest.raises(AttributeError, match="'list' object has no attribute 'keys'"):
            denoiser.save_pretrained(tmp_path / "saved")
    else:  # recompute_rope_inv_freq: loads, but the rotary angles are whatever memory held
        denoiser = load(directory).eval()
        with torch.no_grad():
            assert not torch.allclose(denoiser.model(input_ids=IDS).logits,
                                      reference_logits("dream_legacy"), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_full_legacy_model_saves_and_reloads_with_identical_logits(kind, tmp_path):
    # Fails on 5.x without tied_weights_keys_as_mapping (Dream's list) or if the subclass saved the
    # wrong class name or code file.
    denoiser = load(save_remote_model(kind, tmp_path / kind)).eval()
    denoiser.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["architectures"] == [type(remote_model(kind)).__name__]
    assert json.loads((tmp_path / "saved" / "jointobj.json").read_text()).get("compat_rules", []) == \
        list(denoiser.compat_rules)
    reloaded = load(tmp_path / "saved").eval()
    torch.testing.assert_close(reloaded(input_ids=IDS), denoiser(input_ids=IDS))


def test_compat_false_names_the_class_the_versions_and_the_ways_on(tmp_path):
    directory = save_remote_model("dream_legacy", tmp_path / "dream")
    if not FIVE:  # written for 4.x: it needs no rule there
        assert load(directory, compat=False).compat_rules == ()
        return
    with pytest.raises(RemoteCodeLoadError) as caught:
        load(directory, compat=False)
    message = str(caught.value)
    for part in ("modeling_dream_legacy.DreamLegacyModel", f"transformers {transformers.__version__}",
                 f"{compat.TESTED_TRANSFORMERS[0]} to {compat.TESTED_TRANSFORMERS[1]}", "compat=False",
                 "install transformers 4.57.x", "open an issue"):
        assert part in message, (part, message)
    saved = re.search(r"saved to (\S+)$", message).group(1)
    assert "KeyError: 'default'" in open(saved).read()


def test_an_unknown_remote_code_failure_is_a_jointobj_error(tmp_path):
    # On both lines: code that fails in a way no rule knows ends in RemoteCodeLoadError, not transformers' traceback.
    directory = save_remote_model("llada_legacy", tmp_path / "broken")
    code = directory / "modeling_llada_legacy.py"
    code.write_text(code.read_text().replace("        self.model = LegacyCore(config)\n",
                                             "        raise RuntimeError('an unknown failure')\n"))
    with pytest.raises(RemoteCodeLoadError, match="an unknown failure") as caught:
        load(directory)
    assert "modeling_llada_legacy.LLaDALegacyModel" in str(caught.value)
    assert "ways on: install transformers 4.57.x" in str(caught.value)


def toy_batch(denoiser: Denoiser) -> dict:
    data = load_toyset("likes_tennis").dataset(8, seed=0)
    return DiffusionCollator.for_denoiser(denoiser)(data)


@pytest.mark.parametrize("kind", KINDS)
def test_legacy_model_trains_with_lora_decodes_and_round_trips_its_adapter(kind, tmp_path):
    # load -> LoRA -> a TokenCE and a log-sum step -> every registered decoder -> adapter save and
    # reload with identical logits, on whichever transformers line runs the test.
    denoiser = load(save_remote_model(kind, tmp_path / kind))
    denoiser.add_lora(LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    denoiser.train()
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = toy_batch(denoiser)
    for objective in (TokenCELoss(), LogSumOrdersLoss(["l2r", "random"], blocks=2)):
        before = [p.detach().clone() for p in trainable]
        loss = objective(denoiser, batch, generator=torch.Generator().manual_seed(0)).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert any(not torch.equal(p, b) for p, b in zip(trainable, before)), type(objective).__name__
    denoiser.eval()
    prompt = torch.tensor([[3, 9, 14]])
    for name in DECODERS.names():
        out = build_decoder(name, 2, temperature=0).sample(denoiser, prompt, 4, torch.Generator().manual_seed(0))
        assert out.gen_ids.shape[-1] == 4 and (out.gen_ids != denoiser.mask_token_id).all(), name
    denoiser.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    reloaded = load(tmp_path / "adapter").eval()
    assert reloaded.compat_rules == denoiser.compat_rules
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS), denoiser(input_ids=IDS))
    assert reloaded.settings == denoiser.settings

"""Decoders by name: what `--decoder NAME` on a command line resolves to.

    decoder = build_decoder("confidence", tokens_per_step=2, temperature=1.0)
    out = decoder.sample(denoiser, prompt_ids, gen_length, generator)   # SampleOutput

Every decoder has `.name` and `.sample(denoiser, prompt_ids [b, lp], gen_length, generator,
*, return_trace=False, prompt_attention_mask=None, eos_token_id=None) -> SampleOutput` (prompts
of different lengths and EOS as jointobj/decoding/sampler.py describes); nothing else is assumed
of it, so later decoders
(energy rescoring around any decoder, soft-state decoding) register a factory here with
`@DECODERS.register("name")` and every evaluator can run them.

A factory is called as `factory(tokens_per_step=K, **options)`. K >= 1 or None (the whole
answer, or block, in one step). For the built-in policies:

- top-k (`random`, `l2r`, `confidence`, `margin`, `entropy`): exactly ceil(L / K) steps;
- adaptive (`threshold`, `entropy_bounded`): K sets a *step budget* of ceil(L / K) steps:
  each step commits what the rule picks, but never fewer than the budget needs, so K = 1
  is the pure rule and K = L is one step. The tokens per step they reach is measured
  (`SampleOutput.tokens_per_step`), and that is what tables report.

Options: `temperature` (default 1.0), `block_length` (default None), `steps` (S sequential
steps per block instead of K, 1 <= S <= block length; quotas spread as LLaDA spreads them),
`stop_at_eos` (rows stop once their answer ends in a committed EOS; see UnmaskingSampler),
and the policy's own (`threshold=0.9` for `threshold`, `bound=0.1` nats for `entropy_bounded`).

Energy rescoring wraps any of them: `build_decoder(name, K, rescore="best:self:l2r:4,8")`.
The rescorers are not registered here: they draw N candidates per prompt and run energy
forwards, so they do not keep the one-trajectory, one-forward-per-step contract every
registered decoder keeps (tests/test_sampler.py checks it on all of them).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

import torch

from jointobj.decoding.policies import POLICIES
from jointobj.decoding.rescore import with_rescoring
from jointobj.decoding.sampler import SampleOutput, UnmaskingSampler
from jointobj.utils.registry import Registry

__all__ = ["DECODERS", "Decoder", "build_decoder", "decoder_option_names"]


class Decoder(Protocol):
    name: str

    def sample(self, denoiser: Any, prompt_ids: torch.Tensor, gen_length: int,
               generator: torch.Generator | None = None, *, return_trace: bool = False,
               prompt_attention_mask: torch.Tensor | None = None, eos_token_id: int | None = None) -> SampleOutput: ...


DECODERS: Registry[Callable[..., Decoder]] = Registry("decoder")


def build_decoder(name: str, tokens_per_step: int | None = 1, *, rescore: Any = None, **options: Any) -> Decoder:
    """The decoder registered as `name`, with K = `tokens_per_step` and its options.

    `rescore` (a spec such as "sir:exact,16,step", or a RescoreSpec) wraps it in energy
    rescoring, after or inside its loop (see jointobj.decoding.rescore)."""
    decoder = DECODERS.get(name)(tokens_per_step=tokens_per_step, **options)
    return decoder if rescore is None else with_rescoring(decoder, rescore)


def decoder_option_names(name: str) -> set[str]:
    """Keyword options the decoder `name` accepts (besides tokens_per_step)."""
    factory = DECODERS.get(name)
    return set(getattr(factory, "option_names", ())) or {
        p.name for p in inspect.signature(factory).parameters.values() if p.kind == p.KEYWORD_ONLY
    }


def _policy_decoder(policy_name: str) -> Callable[..., Decoder]:
    policy_class = POLICIES.get(policy_name)
    policy_options = [p for p in inspect.signature(policy_class.__init__).parameters if p != "self"]
    policy_options = [p for p in policy_options if p not in ("args", "kwargs")]

    def factory(tokens_per_step: int | None = 1, *, temperature: float = 1.0, block_length: int | None = None,
                steps: int | None = None, stop_at_eos: bool = False, **options: Any) -> UnmaskingSampler:
        unknown = set(options) - set(policy_options)
        if unknown:
            accepted = ", ".join(["temperature", "block_length", "steps", "stop_at_eos", *policy_options])
            raise ValueError(f"decoder {policy_name!r} takes no option {', '.join(sorted(unknown))}; "
                             f"it accepts {accepted}")
        policy = policy_class(**options)
        return UnmaskingSampler(policy, tokens_per_step, temperature=temperature, block_length=block_length,
                                name=policy_name, steps=steps, stop_at_eos=stop_at_eos)

    factory.option_names = {"temperature", "block_length", "steps", "stop_at_eos", *policy_options}
    factory.__doc__ = f"UnmaskingSampler over {policy_class.__name__}: {policy_class.__doc__}"
    return factory


for _name in POLICIES:
    DECODERS.register(_name)(_policy_decoder(_name))

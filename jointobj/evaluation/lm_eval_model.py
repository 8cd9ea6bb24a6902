r"""jointobj as an lm-evaluation-harness model (the optional `lm-eval` extra: pip install "jointobj[lm-eval]").

    jointobj lm-eval --model jointobj \
        --model_args pretrained=runs/agreement,decoder=threshold,threshold=0.9,tokens_per_step=2 \
        --tasks my_task --include_path my_tasks/

`jointobj lm-eval` (or `python -m jointobj.evaluation.lm_eval_model`) is lm-eval's own command line (every
flag of `lm_eval`) with this module imported first, which registers the model `jointobj` (lm-eval
has no plugin hook that would let a bare `lm_eval --model jointobj` find it). From Python,
`import jointobj.evaluation.lm_eval_model` then `lm_eval.simple_evaluate(model="jointobj", model_args=...)`.

Model args (unknown keys are an error listing these):

    pretrained=DIR        a Denoiser directory (save_pretrained; a LoRA adapter directory too)
    oracle=SETS           instead of pretrained: the exact oracle of toy sets (names or module:attribute,
                          joined by '+'), the ceiling any model can reach; for tests and calibration
    decoder=NAME          generate_until's decoder (any registered one; default confidence)
    tokens_per_step=K     its tokens per step (an int or 'all'; default 1)
    temperature, threshold, bound, block_length   the decoder's options, where it takes them
    gen_length=N          tokens generated when a request gives no max_gen_toks (default 256)
    order=O               loglikelihood's order: l2r (default), r2l, random, or several joined by '+'
                          (each family counts once; random ones average order_samples draws)
    blocks=K              loglikelihood's blocks: 'all' (default: one position per block) or an int K
    order_samples=N       orders drawn per family when an order is random (default 1)
    batch_size, max_rows, seed, device, dtype, trust_remote_code

generate_until decodes `max_gen_toks` tokens after the context with the decoder, trims at the
model's EOS, decodes without special tokens and cuts at the first `until` string
(jointobj.evaluation.generation.generate_texts).

loglikelihood(context, continuation) is jointobj's K-block likelihood of the continuation
given the context (jointobj.diffusion.likelihood.order_log_likelihood), with context tokens visible:

    l_o(x) = sum_k sum_{i in block k} log p(x_i | context, blocks < k of the order visible, the rest masked)

With blocks=all and order=l2r this is the chain rule left to right, an exact normalised
likelihood of the model's l2r sampler at one token per step; with K blocks it is the exact
likelihood of the K-step parallel sampler that follows the order (so it drops as K falls on
answers whose tokens depend on each other: the marginal trap, measured). With several orders
(order=l2r+r2l, or order_samples > 1 random orders) it is log (1/M sum_m exp l_{o_m}(x)), the
likelihood of the sampler that picks one of the M orders at random (for random orders a
stochastic estimate, biased low by Jensen). It is a likelihood, never a bound.
LLaDA's own lm-eval glue instead estimates the ELBO by Monte Carlo: it masks the continuation
at a random ratio t (or a random count), scores the masked tokens in one forward, reweights by
1/t and averages over many draws (LLaDA uses 128): a lower bound on log p(x) under the model's
implied any-order mixture, noisy and loose at small budgets. Ours costs K forwards per order
(n for blocks=all), is deterministic for l2r / r2l, and scores a definite sampler.
is_greedy is reported False (it is not computed), so tasks whose metric reads it (lambada's
acc) are not supported; loglikelihood_rolling scores the whole text unconditionally (no
windows: a text longer than the model's positions is refused).
"""

from __future__ import annotations

import math
from typing import Any

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("jointobj.evaluation.lm_eval_model needs lm-evaluation-harness: pip install 'jointobj[lm-eval]' "
                      "(or pip install lm-eval)") from error

from jointobj.decoding.budget import parse_tokens_per_step
from jointobj.decoding.registry import build_decoder, decoder_option_names
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import ORDERS, OrderProposal
from jointobj.evaluation.generation import generate_texts
from jointobj.model.denoiser import Denoiser
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.utils.checks import check_blocks, check_whole_number

__all__ = ["JointObjLM", "MODEL_ARGS"]

MODEL_ARGS = ("pretrained", "oracle", "decoder", "tokens_per_step", "temperature", "threshold", "bound",
              "block_length", "gen_length", "order", "blocks", "order_samples", "batch_size", "max_batch_size",
              "max_rows", "seed", "device", "dtype", "trust_remote_code")


def _load_denoiser(pretrained: str | None, oracle: str | None, device: str, dtype: str | None,
                   trust_remote_code: bool) -> Any:
    if (pretrained is None) == (oracle is None):
        raise ValueError("the jointobj lm-eval model needs exactly one of pretrained=DIR (a Denoiser directory) "
                         "or oracle=SET[+SET...] (toy sets' exact oracle)")
    if oracle is not None:
        return OracleDenoiser(*str(oracle).split("+"))
    kwargs = {} if dtype in (None, "") else {"dtype": dtype if dtype == "auto" else getattr(torch, str(dtype))}
    denoiser = Denoiser.from_pretrained(str(pretrained), trust_remote_code=trust_remote_code, **kwargs)
    return denoiser.to(device).eval()


def _mixture(loglik: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
    """[b, M] l_o per slot, [M] family of each slot -> [b] log of (1/F) sum_f mean_{slots of f} exp(l_o)."""
    per_family = [torch.logsumexp(loglik[:, family == f], dim=1) - math.log(int((family == f).sum()))
                  for f in family.unique().tolist()]  # F x [b]
    return torch.logsumexp(torch.stack(per_family, dim=1), dim=1) - math.log(len(per_family))  # [b]


@register_model("jointobj")
class JointObjLM(LM):
    """lm-eval's LM over a jointobj Denoiser (model args and what each request computes: module docstring)."""

    def __init__(self, pretrained: str | None = None, oracle: str | None = None, decoder: str = "confidence",
                 tokens_per_step: int | str = 1, temperature: float | None = None, threshold: float | None = None,
                 bound: float | None = None, block_length: int | None = None, gen_length: int = 256,
                 order: str = "l2r", blocks: int | str = "all", order_samples: int = 1, batch_size: int | str = 16,
                 max_batch_size: int | None = None, max_rows: int | None = None, seed: int = 0,
                 device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False):
        super().__init__()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.denoiser = _load_denoiser(pretrained, oracle, device, dtype, trust_remote_code)
        if self.denoiser.tokenizer is None:
            raise ValueError(f"{pretrained} has no tokenizer; save one beside the model")
        self.tokenizer = self.denoiser.tokenizer
        given = {"temperature": temperature, "threshold": threshold, "bound": bound, "block_length": block_length}
        refused = sorted(k for k, v in given.items() if v is not None and k not in decoder_option_names(decoder))
        if refused:
            raise ValueError(f"decoder {decoder!r} takes none of {refused}; it takes "
                             f"{sorted(decoder_option_names(decoder)) or 'no options'}")
        self.decoder, self.tokens_per_step = decoder, tokens_per_step
        self.decoder_options = {k: v for k, v in given.items() if v is not None}
        build_decoder(decoder, parse_tokens_per_step(tokens_per_step), **self.decoder_options)  # fail now
        self.orders = str(order).split("+")
        for name in self.orders:
            ORDERS.get(name)  # unknown orders list the known ones
        self.blocks = check_blocks(blocks)
        self.order_samples = check_whole_number("order_samples", order_samples)
        self.gen_length = check_whole_number("gen_length", gen_length)
        self.batch_size = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        self.max_rows, self.seed = max_rows, seed
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "JointObjLM":
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        return cls.create_from_arg_obj(args, additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "JointObjLM":
        unknown = sorted(set(arg_dict) - set(MODEL_ARGS))
        if unknown:
            raise ValueError(f"unknown model_args for --model jointobj: {', '.join(unknown)}; "
                             f"known: {', '.join(MODEL_ARGS)}")
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k in MODEL_ARGS}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            extra.pop("device")  # lm_eval's --device defaults to cuda: on a machine without one, the default
        return cls(**{**extra, **arg_dict})  # model_args win over lm_eval's own flags

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            context, kwargs = request.args
            until = kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until or [])
            length = int(kwargs.get("max_gen_toks", self.gen_length))
            groups.setdefault((length, tuple(until)), []).append(i)
        for (length, until), rows in groups.items():
            texts = generate_texts(self.denoiser, [requests[i].args[0] for i in rows], self.decoder, length,
                                   self.tokens_per_step, options=self.decoder_options, stop=until, seed=self.seed,
                                   batch_size=self.batch_size)
            for i, text in zip(rows, texts):
                out[i] = text
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ likelihood

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids; trailing spaces of the context move to the continuation,
        and the whole text is tokenized at once so a word split across the join stays one token."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        whole, head = encode(context + continuation), encode(context)
        if whole[:len(head)] != head:  # the join changed the context's tokens: score them apart
            return head, encode(continuation)
        return head, whole[len(head):]

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        limit = getattr(self.denoiser, "max_positions", None)
        device = torch.device(getattr(self.denoiser, "device", "cpu"))
        scores = [math.nan] * len(pairs)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, (context, continuation) in enumerate(pairs):
            if not continuation:
                raise ValueError(f"request {i}: the continuation is empty after tokenization; nothing to score")
            if limit is not None and len(context) + len(continuation) > limit:
                raise ValueError(f"request {i}: {len(context) + len(continuation)} tokens, longer than the model's "
                                 f"{limit} positions")
            by_shape.setdefault((len(context), len(continuation)), []).append(i)
        slots = [name for name in self.orders for _ in range(self.order_samples if name == "random" else 1)]
        family = torch.tensor([self.orders.index(name) for name in slots])  # [M] family of each slot
        proposal = OrderProposal(slots)
        for (lc, n), rows in by_shape.items():
            blocks = "all" if self.blocks == "all" or self.blocks >= n else self.blocks
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                ids = torch.tensor([pairs[i][0] + pairs[i][1] for i in chunk], device=device)  # [b, l]
                prompt = torch.zeros_like(ids, dtype=torch.bool)
                prompt[:, :lc] = True
                batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_mask": prompt}
                orders = proposal.sample(~prompt, self.generator)  # rank [b, M, l]
                with torch.no_grad():
                    loglik = order_log_likelihood(self.denoiser, batch, orders, blocks,
                                                  max_rows=self.max_rows).double().cpu()  # [b, M]
                mixed = _mixture(loglik, family)  # [b]
                for i, value in zip(chunk, mixed.tolist()):
                    scores[i] = value
        return scores

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*request.args) for request in requests]
        return [(score, False) for score in self._score(pairs)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs = [([], self.tokenizer(request.args[0], add_special_tokens=False)["input_ids"]) for request in requests]
        return self._score(pairs)


def main() -> None:
    """lm-eval's command line, with the `jointobj` model registered and the toy-set tasks found by name."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    from jointobj.evaluation.toyset_tasks import with_task_paths

    sys.argv = [sys.argv[0], *with_task_paths(sys.argv[1:])]
    cli_evaluate()


if __name__ == "__main__":
    main()

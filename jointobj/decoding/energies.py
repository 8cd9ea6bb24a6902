"""Sequence energies E(x), lower = more likely, and what each costs, chosen by name.

    from jointobj.decoding.energies import build_energy
    energy = build_energy("self:l2r:4", denoiser=denoiser)   # E = -l_o(x), l2r order, 4 blocks
    e = energy(ids, context)                                  # ids, context [b, l] -> [b] float64
    energy.cost(context)                                      # EnergyCost(steps=1, rows=4 b)

`context` is a prompt mask: True where a token is given (prompt, tokens already committed,
and in-loop the positions left masked). An energy compares candidates that share a context:

    E(x) = -log p(x_scored | x_context) + c(context)

with c the same for every candidate of that context, so best-of-N and importance weights
(which normalise over the candidates of one prompt) never see it. Registered energies
(spec syntax `name[:arg[:arg]]`, as `eval/joint_validity.py --rescore` takes them):

- `self[:ORDER[:K]]`: E = -l_o(x), the denoiser's own K-block likelihood (jointobj.diffusion.likelihood) in
  ORDER (l2r, r2l, random; default l2r, K = all). Cost per candidate: 1 step, K rows (all K mask
  patterns are known up front: one batched call).
- `causal:DIR`: E = -sum_t log p_AR(x_t | x_<t) of an external AutoModelForCausalLM. 1 step, 1 row
  weighted by its parameters / the denoiser's.
- `head`: the learned energy head on the denoiser's pooled hidden states (energy_head.py). 1 step, 1 row.
- `exact`: the toy set's true -log p(answer | prompt) (`ToySet.log_prob`; +inf off the support); tests
  and evaluation only. Free: no forward (what a perfect energy buys).

`self` and `exact` also score *partial* candidates (`accepts_masks`): a masked position in the
context is marginalised, which the in-loop rescorer's `step` scope uses. A `residual` energy
(a head trained the EDLM way) is relative to the sampler it was trained against,
p(x) ∝ q(x) exp(-E(x)); the others stand alone, p(x) ∝ exp(-E(x)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from transformers import AutoModelForCausalLM

from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import ORDERS, OrderProposal, Orders
from jointobj.model.energy_head import energy_head_module, head_energy
from jointobj.model.loading import load_tokenizer
from jointobj.toysets.builtin import ToySet, load_toyset
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.utils.checks import check_blocks
from jointobj.utils.registry import Registry

__all__ = ["ENERGIES", "CausalLMEnergy", "Energy", "EnergyCost", "ExactEnergy", "HeadEnergy", "SelfEnergy",
           "build_energy", "parameter_count", "parse_energy_spec"]

ENERGIES: Registry[type] = Registry("energy")


@dataclass(frozen=True)
class EnergyCost:
    """One call's cost: `steps` sequential forwards (0 or 1), `rows` forward rows summed over
    the candidates (an external model's weighted by its FLOPs relative to the denoiser's)."""

    steps: int
    rows: float


class Energy:
    """`energy(ids [b, l], context [b, l] bool, attention_mask=None) -> [b] float64`; `cost(...)`."""

    name: ClassVar[str]
    accepts_masks: ClassVar[bool] = False  # scores partial candidates ([MASK] positions inside the context)
    residual: bool = False  # True: p ∝ q_sampler exp(-E), relative to the sampler it was trained against
    trained_against: dict | None = None  # a residual energy's sampler: {decoder, tokens_per_step, repr}

    def __call__(self, ids: torch.Tensor, context: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def cost(self, context: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EnergyCost:
        raise NotImplementedError

    @classmethod
    def from_spec(cls, args: Sequence[str], *, denoiser: Any = None, toysets: Sequence[ToySet] = ()) -> "Energy":
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"

    @property
    def spec(self) -> str:
        return self.name


def parse_energy_spec(spec: str) -> tuple[str, list[str]]:
    """'self:l2r:4' -> ('self', ['l2r', '4']); the name must be registered."""
    name, *args = [part.strip() for part in str(spec).split(":")]
    ENERGIES.get(name)  # unknown names list the known ones
    return name, args


def build_energy(spec: "str | Energy", *, denoiser: Any = None, toysets: Sequence[ToySet | str] = ()) -> Energy:
    """An Energy from its spec (see the module table); an Energy passes through unchanged.

    `denoiser` is what `self` and `head` score with; `toysets` what `exact` knows (an
    OracleDenoiser's own sets are used when none are given)."""
    if isinstance(spec, Energy):
        return spec
    name, args = parse_energy_spec(spec)
    sets = [load_toyset(t) if isinstance(t, str) else t for t in toysets]
    return ENERGIES.get(name).from_spec(args, denoiser=denoiser, toysets=sets)


def parameter_count(module: Any) -> int:
    parameters = getattr(module, "parameters", None)
    return sum(p.numel() for p in parameters()) if callable(parameters) else 0


def _need(what: Any, name: str, spec: str) -> Any:
    if what is None:
        raise ValueError(f"the {spec!r} energy needs a {name}; pass {name}=... to build_energy")
    return what


def _attention(ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(ids) if attention_mask is None else attention_mask


def _scored(context: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    return attention.bool() & ~context.bool()  # [b, l]


# ---------------------------------------------------------------- self: the denoiser's own likelihood


@ENERGIES.register("self")
class SelfEnergy(Energy):
    """E = -l_o(x) in one order family with K blocks (K = 'all': one position per block).

    A row with fewer scored positions than K uses one block per position (its exact any-order
    likelihood), so partial candidates of any size can be scored. `max_rows` (default 4096)
    bounds one forward's rows (memory); the count of sequential steps does not depend on it."""

    name = "self"
    accepts_masks = True

    def __init__(self, denoiser: Any, order: str = "l2r", blocks: int | str = "all", *, max_rows: int = 4096,
                 generator: torch.Generator | None = None):
        ORDERS.get(order)
        self.denoiser, self.order, self.blocks = denoiser, order, check_blocks(blocks)
        self.max_rows, self.generator = max_rows, generator
        self.proposal = OrderProposal([order])

    @classmethod
    def from_spec(cls, args, *, denoiser=None, toysets=()):
        if len(args) > 2:
            raise ValueError(f"self takes at most ORDER and K (self:l2r:4), got {':'.join(args)!r}")
        order = args[0] if args else "l2r"
        blocks = args[1] if len(args) > 1 else "all"
        if blocks != "all" and not blocks.isdigit():
            raise ValueError(f"K in self:ORDER:K must be a whole number >= 1 or 'all', got {blocks!r}")
        return cls(_need(denoiser, "denoiser", "self"), order, blocks if blocks == "all" else int(blocks))

    @property
    def spec(self) -> str:
        return f"self:{self.order}:{self.blocks}"

    def _row_blocks(self, scored: torch.Tensor) -> torch.Tensor:
        """[b] blocks each row uses: min(K, n_b)."""
        n = scored.sum(-1)  # [b]
        return n if self.blocks == "all" else n.clamp(max=self.blocks)

    def __call__(self, ids, context, attention_mask=None):
        attention = _attention(ids, attention_mask)
        scored = _scored(context, attention)  # [b, l]
        batch = {"input_ids": ids, "attention_mask": attention, "prompt_mask": context.bool()}
        orders = self.proposal.sample(scored, self.generator)  # rank [b, 1, l]
        per_row = self._row_blocks(scored)  # [b]
        loglik = torch.empty(len(ids), dtype=torch.float64, device=ids.device)
        for k in per_row.unique().tolist():  # one call per distinct K_b (usually one)
            rows = (per_row == k).nonzero().flatten()
            part = {key: value[rows] for key, value in batch.items()}
            blocks = "all" if self.blocks == "all" or k < self.blocks else k
            scores = order_log_likelihood(self.denoiser, part, _select_rows(orders, rows), blocks,
                                          max_rows=self.max_rows)
            loglik[rows] = scores[:, 0].double()
        return -loglik  # [b]

    def cost(self, context, attention_mask=None):
        scored = _scored(context, _attention(context, attention_mask))
        return EnergyCost(1, float(self._row_blocks(scored).sum()))


def _select_rows(orders: Orders, rows: torch.Tensor) -> Orders:
    return Orders(orders.rank[rows], orders.family[rows], orders.names, orders.log_prior[rows],
                  orders.log_proposal[rows])


# ---------------------------------------------------------------- head: the learned energy head


@ENERGIES.register("head")
class HeadEnergy(Energy):
    """The denoiser's learned energy head (energy_head.py): 1 step, 1 row per candidate."""

    name = "head"

    def __init__(self, denoiser: Any):
        head = energy_head_module(denoiser.model)
        if head is None:
            raise ValueError("the denoiser has no energy head; train one with the 'energy' objective "
                             "(python recipes/energy.py) and load that directory")
        self.denoiser, self.residual, self.trained_against = denoiser, head.residual, head.trained_against

    @classmethod
    def from_spec(cls, args, *, denoiser=None, toysets=()):
        if args:
            raise ValueError(f"head takes no arguments, got {':'.join(args)!r}")
        return cls(_need(denoiser, "denoiser", "head"))

    def __call__(self, ids, context, attention_mask=None):
        return head_energy(self.denoiser, ids, attention_mask).double()  # [b]

    def cost(self, context, attention_mask=None):
        return EnergyCost(1, float(len(context)))


# ---------------------------------------------------------------- causal: an external autoregressive LM


@ENERGIES.register("causal")
class CausalLMEnergy(Energy):
    """E = -sum_{t >= 1} log p_AR(x_t | x_<t) over real tokens (the first token is the condition).

    The model reads the denoiser's ids directly when it shares the vocabulary (same size, and
    the same tokens where both directories carry a tokenizer); otherwise pass `id_map`, a [V]
    long tensor from denoiser ids to the causal model's (-1: no counterpart). Its rows are
    weighted by `flops_ratio`, by default its parameter count over the denoiser's (1 when the
    denoiser has none, e.g. the oracle)."""

    name = "causal"

    def __init__(self, model: Any, *, denoiser: Any = None, tokenizer: Any = None, id_map: torch.Tensor | None = None,
                 flops_ratio: float | None = None, path: str = "?"):
        self.model, self.path = model.eval(), path
        causal_vocab = int(model.config.vocab_size)
        source_vocab = getattr(denoiser, "vocab_size", None)
        if id_map is None and source_vocab is not None and not _same_vocabulary(causal_vocab, tokenizer, denoiser):
            raise ValueError(
                f"the causal model in {path} has another vocabulary ({causal_vocab} tokens) than the denoiser "
                f"({source_vocab}); pass id_map (a [{source_vocab}] tensor of its ids, -1 where none) or use a "
                "causal model trained on the denoiser's tokenizer")
        if id_map is not None:
            id_map = torch.as_tensor(id_map, dtype=torch.long)
            if id_map.dim() != 1 or (id_map >= causal_vocab).any():
                raise ValueError(f"id_map must be a 1-d tensor of ids below {causal_vocab} (-1: none)")
        self.id_map = id_map
        denoiser_parameters = parameter_count(denoiser)
        estimate = parameter_count(model) / denoiser_parameters if denoiser_parameters else 1.0
        self.flops_ratio = float(estimate if flops_ratio is None else flops_ratio)

    @classmethod
    def from_spec(cls, args, *, denoiser=None, toysets=()):
        if len(args) != 1:
            raise ValueError("causal needs a local model directory: causal:DIR")
        path = Path(args[0])
        if not path.is_dir():
            raise FileNotFoundError(f"causal model directory {path} does not exist; save one with save_pretrained")
        model = AutoModelForCausalLM.from_pretrained(str(path))
        if denoiser is not None:
            model = model.to(getattr(denoiser, "device", "cpu"))
        return cls(model, denoiser=denoiser, tokenizer=load_tokenizer(path, False), path=str(path))

    @property
    def spec(self) -> str:
        return f"causal:{self.path}"

    def __call__(self, ids, context, attention_mask=None):
        attention = _attention(ids, attention_mask)
        mapped = ids if self.id_map is None else self.id_map.to(ids.device)[ids]  # [b, l]
        if (mapped < 0).any():
            token = int(ids[mapped < 0][0])
            raise ValueError(f"token id {token} has no counterpart in the causal model's vocabulary (id_map is -1)")
        logits = self.model(input_ids=mapped, attention_mask=attention).logits.double()  # [b, l, V']
        token = logits[:, :-1].log_softmax(-1).gather(-1, mapped[:, 1:, None]).squeeze(-1)  # [b, l-1]
        return -(token * attention[:, 1:]).sum(-1)  # [b]

    def cost(self, context, attention_mask=None):
        return EnergyCost(1, self.flops_ratio * len(context))


def _same_vocabulary(causal_vocab: int, tokenizer: Any, denoiser: Any) -> bool:
    """Same size, and the same tokens where both sides carry a tokenizer."""
    if causal_vocab != int(denoiser.vocab_size):
        return False
    ours = getattr(denoiser, "tokenizer", None)
    return tokenizer is None or ours is None or tokenizer.get_vocab() == ours.get_vocab()


# ---------------------------------------------------------------- exact: the toy set's own probability


@ENERGIES.register("exact")
class ExactEnergy(Energy):
    """E = -log p(answer | prompt) of the toy set the row belongs to (by its tag, as the oracle
    does); +inf off the support. Answer positions holding [MASK] are marginalised:
    E = -log sum of p over the supported answers that match the visible tokens."""

    name = "exact"
    accepts_masks = True

    def __init__(self, *toysets: ToySet | str):
        self.router = OracleDenoiser(*toysets)  # reuses its tag -> set dispatch and checks
        self.mask_token_id = self.router.mask_token_id

    @classmethod
    def from_spec(cls, args, *, denoiser=None, toysets=()):
        if args:
            raise ValueError(f"exact takes no arguments, got {':'.join(args)!r}")
        sets = list(toysets) or list(getattr(denoiser, "toysets", {}).values())
        if not sets:
            raise ValueError("the exact energy needs the toy sets it scores (toysets=[...]); it is for evaluation")
        return cls(*sets)

    def __call__(self, ids, context, attention_mask=None):
        device, ids = ids.device, ids.cpu().long()
        out = torch.full((len(ids),), torch.inf, dtype=torch.float64)
        tags = ids[:, 0]
        for tag, toyset in self.router.toysets.items():
            rows = torch.arange(len(ids)) if tag is None else (tags == tag).nonzero().flatten()
            if len(rows):
                out[rows] = -_pattern_log_prob(toyset, ids[rows, : toyset.length], self.mask_token_id)
        return out.to(device)

    def cost(self, context, attention_mask=None):
        return EnergyCost(0, 0.0)


def _pattern_log_prob(toyset: ToySet, ids: torch.Tensor, mask_token_id: int, chunk: int = 1 << 20) -> torch.Tensor:
    """[r, lp + la] rows of one set -> [r] float64 log P(visible answer tokens | prompt); -inf when none match."""
    lp = toyset.prompt_length
    prompts, answers = ids[:, :lp], ids[:, lp:]  # [r, lp], [r, la]
    masked = answers == mask_token_id  # [r, la]
    complete = ~masked.any(1)  # [r]
    out = torch.empty(len(ids), dtype=torch.float64)
    if complete.any():
        out[complete] = toyset.log_prob(prompts[complete], answers[complete])
    partial = (~complete).nonzero().flatten()
    if len(partial):
        index = toyset.prompt_index(prompts[partial])  # [m]
        for p in index.unique().tolist():
            rows = partial[index == p]  # rows of prompt p
            support, probs = toyset.answers[p], toyset.answer_probs[p]  # [S, la], [S]
            step = max(1, chunk // max(1, support.numel()))
            for part in rows.split(step):
                match = ((support[None] == answers[part, None]) | masked[part, None]).all(-1)  # [c, S]
                out[part] = (match.double() @ probs).log()
    return out

"""The learned order head: a small add-on that scores which masked positions a decoder commits next.

    from jointobj.model.order_head import attach_order_head
    head = attach_order_head(denoiser, width=32)          # before or after add_lora: saved beside the model
    scores = head(logits, eligible)                        # [b, n] float32, higher = commit earlier

It reads the state the decoder sees at a step, the logits of the answer positions [b, n, V] (the
denoiser's last hidden states through its own LM head; the mask column already excluded) and which
positions are eligible [b, n], and nothing else: never the sampled token, never the data. So the
`learned` policy that ranks by it (jointobj/decoding/policies.py) is state-determined and the
decoder law (jointobj/decoding/decoder_law.py) stays exact for it.

    score_i = exp(log_scale) * (max_v p_i(v) + MLP([h_i, mean over eligible j of h_j]))
    h_i     = GELU(W_p p_i + W_s [top-4 of p_i sorted, entropy_i] + E[i])     (p_i = softmax(logits_i))

The MLP's last layer starts at zero, so a fresh head ranks exactly as the confidence policy; the
scale (learned, starts at e^2) sets only how sharply a Plackett-Luce draw over the scores follows the
ranking while training (jointobj/objectives/order_gradient.py), never the ranking itself. Features
of ineligible positions are zeroed: the sampler passes real logits there, the decoder law a constant.

Saving: it is an add-on (jointobj/model/add_ons.py), `order_head.safetensors` beside the model or
adapter, its settings (vocabulary, longest answer, width) in jointobj.json.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jointobj.model.add_ons import ADD_ONS, AddOn, put_on_model, trained_add_on

__all__ = ["ORDER_HEAD", "OrderHead", "attach_order_head", "find_order_head"]

ORDER_HEAD = "order_head"  # attribute on the bare model, and its name in LoraConfig.modules_to_save
TOP = 4  # sorted top probabilities fed as vocabulary-free confidence features


@ADD_ONS.register(ORDER_HEAD)
class OrderHead(AddOn):
    """logits [b, n, V], eligible [b, n] -> scores [b, n] float32 (eligible positions; others -inf)."""

    def __init__(self, vocab_size: int, max_length: int = 64, width: int = 32):
        super().__init__()
        if vocab_size < 2 or max_length < 1 or width < 1:
            raise ValueError(f"vocab_size >= 2, max_length >= 1 and width >= 1 needed, got {vocab_size}, "
                             f"{max_length}, {width}")
        self.vocab_size, self.max_length, self.width = int(vocab_size), int(max_length), int(width)
        self.tokens = nn.Linear(vocab_size, width)
        self.stats = nn.Linear(TOP + 1, width)
        self.position = nn.Embedding(max_length, width)
        self.out = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, 1))
        self.log_scale = nn.Parameter(torch.tensor(2.0))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def settings(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "max_length": self.max_length, "width": self.width}

    @classmethod
    def attach(cls, denoiser: Any, settings: dict[str, Any]) -> "OrderHead":
        return attach_order_head(denoiser, **settings)

    def forward(self, logits: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        b, n, vocab = logits.shape
        if vocab != self.vocab_size or n > self.max_length:
            raise ValueError(f"the order head reads {self.vocab_size} logits over at most {self.max_length} answer "
                             f"positions, got {vocab} over {n}; attach a head built for this model and answer length")
        weight = self.tokens.weight
        keep = eligible[..., None].to(weight.dtype)  # [b, n, 1]
        p = logits.float().softmax(-1).to(weight.dtype) * keep  # [b, n, V]
        top = p.topk(min(TOP, vocab), dim=-1).values  # [b, n, <=4]
        top = nn.functional.pad(top, (0, TOP - top.shape[-1]))  # [b, n, 4]
        entropy = torch.special.entr(p).sum(-1, keepdim=True)  # [b, n, 1]
        where = torch.arange(n, device=logits.device)  # [n]
        h = nn.functional.gelu(self.tokens(p) + self.stats(torch.cat([top, entropy], -1)) + self.position(where))
        h = h * keep  # [b, n, w]
        context = h.sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)  # [b, 1, w]
        residual = self.out(torch.cat([h, context.expand_as(h)], -1)).squeeze(-1)  # [b, n]
        scores = self.log_scale.exp() * (top[..., 0] + residual)  # [b, n]
        return scores.float().masked_fill(~eligible, -torch.inf)


def find_order_head(model: Any) -> OrderHead | None:
    """The order head a (possibly peft-wrapped) denoiser's model carries, the trained copy; None without one."""
    model = getattr(model, "model", model)  # a Denoiser, or its model
    return trained_add_on(model, ORDER_HEAD) if isinstance(model, nn.Module) else None


def attach_order_head(denoiser: Any, vocab_size: int | None = None, max_length: int = 64,
                      width: int = 32) -> OrderHead:
    """Put a fresh OrderHead on the denoiser's bare model (trainable and saved with it). `vocab_size`
    defaults to the denoiser's; a head recorded for another vocabulary is refused."""
    actual = getattr(denoiser, "vocab_size", None)
    if vocab_size is not None and isinstance(actual, int) and vocab_size != actual:
        raise ValueError(f"the order head was built for a vocabulary of {vocab_size}, but this model has {actual}; "
                         "load the head onto the model it was trained with")
    if find_order_head(denoiser) is not None:
        raise ValueError("the model already has an order head; one model carries one head")
    head = OrderHead(vocab_size or actual, max_length, width).to(getattr(denoiser, "device", "cpu"))
    return put_on_model(denoiser, ORDER_HEAD, head)

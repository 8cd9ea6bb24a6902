"""A LLaDA-style test model written the transformers 4.x way, from scratch for jointobj's tests.

Besides the conventions of modeling_llada_style.py (attention that never reads the mask, logits
at i predict token i, the mask id in the config only, no gradient checkpointing), it has the
habits of code written for transformers 4.x that LLaDA's published modeling code also has:
- `__init__` never calls `post_init()` (5.x's loader then misses `all_tied_weights_keys`);
- `tie_weights(self)` takes no arguments (5.x calls it with `missing_keys=` and `recompute_mapping=`);
- `forward` reads `self.config.use_cache` (5.x's PretrainedConfig drops `use_cache`).
It loads unmodified on transformers 4.57; on 5.x only through jointobj's compatibility rules.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_llada_legacy import LLaDALegacyConfig


def rotate(x, theta):
    """Rotary position embedding of x [b, h, l, d]."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # [d/2]
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * frequencies  # [l, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class LegacyBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        width, self.heads, self.theta = config.d_model, config.n_heads, config.rope_theta
        self.attn_norm = nn.LayerNorm(width)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width, bias=False) for _ in range(3))
        self.attn_out = nn.Linear(width, width, bias=False)
        self.ff_norm = nn.LayerNorm(width)
        self.ff_proj = nn.Linear(width, 2 * config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, width, bias=False)

    def forward(self, hidden):
        b, l, d = hidden.shape
        x = self.attn_norm(hidden)
        q, k, v = (project(x).view(b, l, self.heads, d // self.heads).transpose(1, 2)  # [b, h, l, d/h] each
                   for project in (self.q_proj, self.k_proj, self.v_proj))
        attended = F.scaled_dot_product_attention(rotate(q, self.theta), rotate(k, self.theta), v)  # [b, h, l, d/h]
        hidden = hidden + self.attn_out(attended.transpose(1, 2).reshape(b, l, d))
        gate, up = self.ff_proj(self.ff_norm(hidden)).chunk(2, dim=-1)
        return hidden + self.ff_out(F.silu(gate) * up)


class LegacyCore(nn.Module):
    """The plain-torch body (held as `model.transformer`), as a 4.x-era port of a training codebase would."""

    def __init__(self, config):
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.d_model),
            "blocks": nn.ModuleList(LegacyBlock(config) for _ in range(config.n_layers)),
            "ln_f": nn.LayerNorm(config.d_model),
            "ff_out": nn.Linear(config.d_model, config.vocab_size, bias=False),
        })


class LLaDALegacyModel(PreTrainedModel):
    config_class = LLaDALegacyConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False

    def __init__(self, config):
        super().__init__(config)
        self.model = LegacyCore(config)
        # No self.post_init() here: transformers 4.x did not need one.

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, use_cache=None,
                output_hidden_states=False, return_dict=None, **kwargs):
        del attention_mask  # attends everywhere, as the original LLaDA does
        if use_cache is None:
            use_cache = self.config.use_cache  # an AttributeError on 5.x unless the config keeps it
        assert not use_cache, "this test model has no cache"
        transformer = self.model.transformer
        hidden = transformer.wte(input_ids) if inputs_embeds is None else inputs_embeds  # [b, l, d]
        states = [hidden]
        for block in transformer.blocks:
            hidden = block(hidden)
            states.append(hidden)
        hidden = transformer.ln_f(hidden)
        if self.config.weight_tying:
            logits = F.linear(hidden, transformer.wte.weight)  # [b, l, V]
        else:
            logits = transformer.ff_out(hidden)  # [b, l, V]
        return MaskedLMOutput(logits=logits, hidden_states=tuple(states) if output_hidden_states else None)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        transformer = self.model.transformer
        return transformer.wte if self.config.weight_tying else transformer.ff_out

    def set_output_embeddings(self, value):
        self.model.transformer["wte" if self.config.weight_tying else "ff_out"] = value

    def tie_weights(self):  # the 4.x signature: no missing_keys, no recompute_mapping
        if self.config.weight_tying:
            self.model.transformer.ff_out.weight = self.model.transformer.wte.weight

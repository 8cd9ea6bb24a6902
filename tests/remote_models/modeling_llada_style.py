"""A LLaDA-style test model, written from scratch for jointobj's tests (no code of LLaDA's).

What it shares with the original LLaDA: full bidirectional attention that never reads the
attention mask (padding moves real positions' logits), logits at i predict token i, the mask id
only in the config, and no gradient-checkpointing support.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_llada_style import LLaDAStyleConfig


def rotate(x, theta):
    """Rotary position embedding of x [b, h, l, d]."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # [d/2]
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * frequencies  # [l, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class LLaDAStyleBlock(nn.Module):
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


class LLaDAStyleModel(PreTrainedModel):
    config_class = LLaDAStyleConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(LLaDAStyleBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.ff_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, output_hidden_states=False, **kwargs):
        del attention_mask  # attends everywhere, as the original LLaDA does
        hidden = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # [b, l, d]
        states = [hidden]
        for block in self.blocks:
            hidden = block(hidden)
            states.append(hidden)
        logits = self.ff_head(self.ln_f(hidden))  # [b, l, V]
        return MaskedLMOutput(logits=logits, hidden_states=tuple(states) if output_hidden_states else None)

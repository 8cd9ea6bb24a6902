"""A Dream-style test model, written from scratch for jointobj's tests (no code of Dream's).

What it shares with Dream: a decoder architecture (pre-norm blocks, rotary positions, SwiGLU)
with full bidirectional attention; logits at i - 1 predict token i (trained that way); the
attention mask is handed straight to torch's scaled_dot_product_attention, which accepts a bool
or float mask and refuses a long one; gradient checkpointing is supported.
"""

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_dream_style import DreamStyleConfig


def rotate(x, theta):
    """Rotary position embedding of x [b, h, l, d]."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # [d/2]
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * frequencies  # [l, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        width, self.heads, self.theta = config.hidden_size, config.num_attention_heads, config.rope_theta
        self.input_norm = nn.LayerNorm(width)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.o_proj = nn.Linear(width, width)
        self.post_norm = nn.LayerNorm(width)
        self.gate_proj = nn.Linear(width, config.intermediate_size)
        self.up_proj = nn.Linear(width, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, width)

    def forward(self, hidden, attention_mask):
        b, l, d = hidden.shape
        x = self.input_norm(hidden)
        q, k, v = (project(x).view(b, l, self.heads, d // self.heads).transpose(1, 2)  # [b, h, l, d/h] each
                   for project in (self.q_proj, self.k_proj, self.v_proj))
        mask = attention_mask
        if mask is not None and mask.dim() == 2:
            mask = mask[:, None, None, :]  # [b, 1, 1, l], its dtype untouched
        attended = F.scaled_dot_product_attention(rotate(q, self.theta), rotate(k, self.theta), v, attn_mask=mask,
                                                  is_causal=False)  # [b, h, l, d/h]; the mask goes in as given
        hidden = hidden + self.o_proj(attended.transpose(1, 2).reshape(b, l, d))
        x = self.post_norm(hidden)
        return hidden + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamStyleModel(PreTrainedModel):
    config_class = DreamStyleConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=False, **kwargs):
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [b, l, d]
        states = [hidden]
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, hidden, attention_mask, use_reentrant=False)
            else:
                hidden = layer(hidden, attention_mask)
            states.append(hidden)
        logits = self.lm_head(self.norm(hidden))  # [b, l, V]: position i predicts token i + 1
        return MaskedLMOutput(logits=logits, hidden_states=tuple(states) if output_hidden_states else None)

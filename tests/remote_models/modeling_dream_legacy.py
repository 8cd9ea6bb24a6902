"""A Dream-style test model written the transformers 4.x way, from scratch for jointobj's tests.

Besides the conventions of modeling_dream_style.py (full bidirectional attention, logits at i - 1
predict token i, the attention mask handed straight to SDPA, gradient checkpointing), it has the
habits of code written for transformers 4.x that Dream's published modeling code also has:
- its rotary embedding looks up `ROPE_INIT_FUNCTIONS["default"]` (5.x has no "default" entry);
- `_tied_weights_keys` is a list (5.x reads a {target: source} mapping);
- the rotary `inv_freq` is a non-persistent buffer and its own `_init_weights` leaves it alone
  (5.x's loader allocates such buffers empty and relies on `_init_weights` to fill them).
It loads unmodified on transformers 4.57; on 5.x only through jointobj's compatibility rules.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .configuration_dream_legacy import DreamLegacyConfig


class DreamLegacyRotaryEmbedding(nn.Module):
    def __init__(self, config, device=None):
        super().__init__()
        self.config = config
        self.rope_type = (config.rope_scaling or {}).get("rope_type", "default")
        self.rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = self.rope_init_fn(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = self.inv_freq

    @torch.no_grad()
    def forward(self, x, position_ids):
        angles = position_ids[:, :, None].float() * self.inv_freq[None, None, :].float()  # [b, l, d/2]
        angles = torch.cat([angles, angles], dim=-1)  # [b, l, d]
        return (angles.cos() * self.attention_scaling).to(x.dtype), (angles.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class DreamLegacyBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        width, self.heads = config.hidden_size, config.num_attention_heads
        self.input_norm = nn.LayerNorm(width)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.o_proj = nn.Linear(width, width, bias=False)
        self.post_norm = nn.LayerNorm(width)
        self.gate_proj = nn.Linear(width, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(width, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, width, bias=False)

    def forward(self, hidden, attention_mask, cos, sin):
        b, l, d = hidden.shape
        x = self.input_norm(hidden)
        q, k, v = (project(x).view(b, l, self.heads, d // self.heads).transpose(1, 2)  # [b, h, l, d/h] each
                   for project in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = cos[:, None], sin[:, None]  # [b, 1, l, d/h]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        mask = attention_mask
        if mask is not None and mask.dim() == 2:
            mask = mask[:, None, None, :]  # [b, 1, 1, l], its dtype untouched
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)  # [b, h, l, d/h]
        hidden = hidden + self.o_proj(attended.transpose(1, 2).reshape(b, l, d))
        x = self.post_norm(hidden)
        return hidden + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamLegacyPreTrainedModel(PreTrainedModel):
    config_class = DreamLegacyConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamLegacyBlock"]

    def _init_weights(self, module):  # the 4.x habit: linear and embedding weights only
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)


class DreamLegacyBaseModel(DreamLegacyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamLegacyBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.rotary_emb = DreamLegacyRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=False):
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [b, l, d]
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None].expand(hidden.shape[0], -1)  # [b, l]
        cos, sin = self.rotary_emb(hidden, positions)  # [b, l, d/h] each
        states = [hidden]
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden = self._gradient_checkpointing_func(layer.__call__, hidden, attention_mask, cos, sin)
            else:
                hidden = layer(hidden, attention_mask, cos, sin)
            states.append(hidden)
        return BaseModelOutput(last_hidden_state=self.norm(hidden),
                               hidden_states=tuple(states) if output_hidden_states else None)


class DreamLegacyModel(DreamLegacyPreTrainedModel):
    _tied_weights_keys = ["lm_head.weight"]  # the 4.x form: a list of the tied (target) names

    def __init__(self, config):
        super().__init__(config)
        self.model = DreamLegacyBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=False, **kwargs):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                             output_hidden_states=output_hidden_states)
        logits = self.lm_head(outputs.last_hidden_state)  # [b, l, V]: position i predicts token i + 1
        return MaskedLMOutput(logits=logits, hidden_states=outputs.hidden_states)

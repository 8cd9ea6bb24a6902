"""Configuration of the LLaDA-style test model written the transformers 4.x way (see modeling_llada_legacy.py).

Like LLaDA's published config it takes `use_cache` and hands it to PretrainedConfig, which kept it as
an attribute before transformers 5.0 and drops it from 5.0 on. Written here from scratch.
"""

from transformers import PretrainedConfig


class LLaDALegacyConfig(PretrainedConfig):
    """The mask id lives here only (the tokenizer has no mask token); model_type "llada" as LLaDA's."""

    model_type = "llada"

    def __init__(self, use_cache=False, vocab_size=64, d_model=64, mlp_hidden_size=128, n_layers=2, n_heads=4,
                 max_sequence_length=64, rope_theta=10000.0, weight_tying=False, mask_token_id=2, pad_token_id=0,
                 eos_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.mlp_hidden_size = mlp_hidden_size
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.weight_tying = weight_tying
        self.mask_token_id = mask_token_id
        super().__init__(use_cache=use_cache, pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)

    # The usual names, read-only, as LLaDA's config gives them (DeepSpeed's `auto` bucket sizes read hidden_size).
    @property
    def hidden_size(self):
        return self.d_model

    @property
    def num_attention_heads(self):
        return self.n_heads

    @property
    def num_hidden_layers(self):
        return self.n_layers

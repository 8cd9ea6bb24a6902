"""Configuration of the Dream-style test model written the transformers 4.x way (see modeling_dream_legacy.py).

model_type "dream", as Dream's own config names itself: jointobj reads the logit shift from it.
No rope_scaling means the "default" rotary initialiser, looked up by name. Written here from scratch.
"""

from transformers import PretrainedConfig


class DreamLegacyConfig(PretrainedConfig):
    model_type = "dream"

    def __init__(self, vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=64, rope_theta=10000.0, rope_scaling=None,
                 initializer_range=0.02, use_cache=False, tie_word_embeddings=False, mask_token_id=2,
                 pad_token_id=0, eos_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.mask_token_id = mask_token_id
        super().__init__(tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id,
                         eos_token_id=eos_token_id, **kwargs)

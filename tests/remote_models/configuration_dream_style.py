"""Configuration of the Dream-style test model (written for jointobj's tests; see modeling_dream_style.py)."""

from transformers import PretrainedConfig


class DreamStyleConfig(PretrainedConfig):
    """A decoder-shaped model with full bidirectional attention that keeps the autoregressive shift.

    model_type "dream", as Dream's own config names itself: jointobj reads the shift from it.
    """

    model_type = "dream"

    def __init__(self, vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=64, rope_theta=10000.0, mask_token_id=2,
                 pad_token_id=0, eos_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.mask_token_id = mask_token_id
        kwargs.setdefault("tie_word_embeddings", False)  # as Dream's; 4.x would tie lm_head otherwise
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)

"""Configuration of the LLaDA-style test model (written for jointobj's tests; see modeling_llada_style.py)."""

from transformers import PretrainedConfig


class LLaDAStyleConfig(PretrainedConfig):
    """The mask id lives here only (the tokenizer has no mask token), as in LLaDA's config."""

    model_type = "llada_style"

    def __init__(self, vocab_size=64, d_model=64, mlp_hidden_size=128, n_layers=2, n_heads=4,
                 max_sequence_length=64, rope_theta=10000.0, mask_token_id=2, pad_token_id=0, eos_token_id=None,
                 **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.mlp_hidden_size = mlp_hidden_size
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.mask_token_id = mask_token_id
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)

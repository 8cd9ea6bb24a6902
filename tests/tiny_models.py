"""Model classes the tests need that transformers does not ship.

`BidirectionalLM` stands in for LLaDA: a plain nn.Module transformer with no HF head class.
`MixingLM` is a few hundred parameters with sharp conditionals that counts its forwards (and can
make each forward a collective, as ZeRO-3's weight gather is).
`sharp_denoiser` is a tiny ModernBERT with large random weights for the enumeration tests.
`CUSTOM_CODE` is the source of a remote-code model (PreTrainedModel + auto_map), written into
a temporary directory to test `trust_remote_code`.
"""

import functools
import math

import torch
import torch.distributed as dist
from torch import nn

from jointobj.model.denoiser import Denoiser
from jointobj.model.tiny import tiny_masked_lm


class BidirectionalLM(nn.Module):
    """Token ids or embeddings -> logits, full (or causal, for the refusal test) self-attention."""

    def __init__(self, vocab_size: int = 32, dim: int = 32, layers: int = 2, causal: bool = False,
                 max_positions: int = 64):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_positions, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.lm_head = nn.Linear(dim, vocab_size)
        self.causal = causal
        self.max_positions = max_positions

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [b, l, d]
        length = hidden.shape[1]
        hidden = hidden + self.positions(torch.arange(length, device=hidden.device))
        causal_mask = nn.Transformer.generate_square_subsequent_mask(length) if self.causal else None
        padding = None if attention_mask is None else ~attention_mask.bool()
        hidden = self.blocks(hidden, mask=causal_mask, src_key_padding_mask=padding, is_causal=self.causal)
        return self.lm_head(hidden)  # [b, l, V]


class MixingLM(nn.Module):
    """A small bidirectional LM: logits = W tanh(E[x] + P + A (E[x] + P)) (~250 parameters at the defaults).
    Large weights (`scale`) make its conditionals sharp, so orders get clearly different likelihoods.

    It counts its forwards (`forwards`), recomputations under checkpointing included. With
    `collective` on under torch.distributed each forward is a collective, as ZeRO-3's parameter
    gather is: a rank whose forward meets another rank's different collective fails."""

    def __init__(self, vocab: int = 20, length: int = 8, dim: int = 6, scale: float = 2.0, seed: int = 0,
                 mask_token_id: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mask_token_id = mask_token_id
        self.embed = nn.Parameter(scale * torch.randn(vocab, dim, generator=g))
        self.position = nn.Parameter(scale * torch.randn(length, dim, generator=g))
        self.mix = nn.Parameter(torch.randn(length, length, generator=g) / math.sqrt(length))
        self.head = nn.Parameter(scale * torch.randn(dim, vocab, generator=g))
        self.forwards, self.collective = 0, False

    def forward(self, input_ids, attention_mask=None):
        self.forwards += 1
        if self.collective and dist.is_initialized():
            gathered = torch.ones(2)
            dist.all_reduce(gathered)  # stands in for the weight gather
            assert gathered.tolist() == [dist.get_world_size()] * 2, "a forward met another collective"
        h = self.embed[input_ids] + self.position[: input_ids.shape[1]]  # [r, l, d]
        return torch.tanh(h + torch.einsum("ij,rjd->rid", self.mix[: h.shape[1], : h.shape[1]], h)) @ self.head


CUSTOM_CODE = '''
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class TinyDiffusionConfig(PretrainedConfig):
    model_type = "tiny_diffusion"

    def __init__(self, vocab_size=32, hidden_size=32, mask_token_id=2, max_sequence_length=64, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.mask_token_id = mask_token_id
        self.max_sequence_length = max_sequence_length
        kwargs.setdefault("tie_word_embeddings", False)  # 4.x would tie lm_head to wte (its default is True)
        super().__init__(**kwargs)


class TinyDiffusionModel(PreTrainedModel):
    config_class = TinyDiffusionConfig

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        layer = nn.TransformerEncoderLayer(config.hidden_size, 4, 2 * config.hidden_size, 0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, **kwargs):
        hidden = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        padding = None if attention_mask is None else ~attention_mask.bool()
        return MaskedLMOutput(logits=self.lm_head(self.blocks(hidden, src_key_padding_mask=padding)))
'''


def write_custom_code_model(directory) -> None:
    """Save a remote-code model (LLaDA-style: config + AutoModel in auto_map) into `directory`."""
    import importlib.util
    import json
    import sys

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "modeling_tiny.py").write_text(CUSTOM_CODE)
    spec = importlib.util.spec_from_file_location("modeling_tiny_for_save", directory / "modeling_tiny.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.TinyDiffusionModel(module.TinyDiffusionConfig())
    model.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_tiny.TinyDiffusionConfig",
                          "AutoModel": "modeling_tiny.TinyDiffusionModel"}
    (directory / "config.json").write_text(json.dumps(config, indent=2))


@functools.cache
def sharp_denoiser(vocab: int = 4, mask: int = 3):
    """A tiny ModernBERT with large random weights (seed 0, N(0, 1) weights from seed 1): conditionals far from
    uniform and strongly dependent on what is visible, so a wrong order or normalisation shows. Shared by the
    enumeration tests of the decoder law, the learned order and its gradient."""
    model = tiny_masked_lm("modernbert", vocab_size=vocab, seed=0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    return Denoiser(model, mask_token_id=mask).eval()

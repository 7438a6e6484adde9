"""Shared fixtures: tiny random-weight models (seconds) and the real SmolLM2-135M (integration)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _save_tiny(path, family: str, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if family == "qwen2":
        cfg = Qwen2Config(**TINY, rope_theta=1e6, tie_word_embeddings=False, eos_token_id=3)
        model = Qwen2ForCausalLM(cfg)
    elif family == "gemma3_text":  # a 6-position window (the tests run past it) and a scale that is not 1/sqrt(head_dim)
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(**TINY, head_dim=16, sliding_window=6, query_pre_attn_scalar=24,
                               layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                               eos_token_id=3, pad_token_id=0, bos_token_id=2)
        model = Gemma3ForCausalLM(cfg)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:  # norm weights (offsets from 1 in Gemma): not all zero
                    p.normal_(0, 0.3)
    elif family == "qwen3":  # q/k norms, no biases; a 6-position window on the last layer only
        from transformers import Qwen3Config, Qwen3ForCausalLM

        cfg = Qwen3Config(**TINY, head_dim=24, rope_theta=1e6, tie_word_embeddings=False, eos_token_id=3,
                          use_sliding_window=True, sliding_window=6, max_window_layers=2)
        model = Qwen3ForCausalLM(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("q_norm.weight", "k_norm.weight")):  # not all ones
                    p.normal_(1, 0.3)
    elif family == "mistral":  # a 6-position window on every layer
        from transformers import MistralConfig, MistralForCausalLM

        cfg = MistralConfig(**TINY, sliding_window=6, tie_word_embeddings=False, eos_token_id=3)
        model = MistralForCausalLM(cfg)
    else:
        cfg = LlamaConfig(**TINY, rope_theta=1e5, tie_word_embeddings=True, eos_token_id=3)
        model = LlamaForCausalLM(cfg)
    # Random init is nearly uniform; a larger scale gives peaked, realistic next-token distributions.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session", params=["qwen2", "llama", "gemma3_text", "qwen3", "mistral"])
def tiny_dir(request, tmp_path_factory):
    """A random-weight model in HF format: Qwen2-style (q/k/v bias, untied), Llama-style (tied),
    Gemma-3-style (sliding-window layers, q/k and sandwich norms), Qwen3-style (q/k norms, a
    sliding last layer) or Mistral-style (every layer sliding)."""
    return _save_tiny(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny-qwen2-only"), "qwen2", seed=1)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M, pulled into $SPECDRAFT_HOME once per machine."""
    from specdraft import fetch

    return fetch.resolve("smollm2-135m", progress=False)


def tiny_decoder(vocab: int = 97, seed: int = 0, layers: int = 2, scale: float = 0.25, family: str = "qwen2",
                 tie: bool = False):
    """A random-weight Decoder built directly (no HF round trip), float32, on the CPU; its LM head
    is a matrix of its own unless `tie` (then the embedding's; always for gemma3_text)."""
    from specdraft.runtime.config import ModelConfig
    from specdraft.runtime.model import Decoder

    gemma = family == "gemma3_text"
    # Gemma 3's layout: a 5-position sliding window on every layer but each third (so short tests
    # cross it), its own RoPE base there, q/k norms, sandwich norms, tanh-GELU, scaled embeddings.
    extra = dict(activation="gelu_tanh", embed_scale=32 ** 0.5, attn_scale=12 ** -0.5, qk_norm=True,
                 sandwich_norms=True, sliding_window=5, sliding_layers=tuple(i % 3 != 2 for i in range(layers)),
                 rope_local_theta=1e3) if gemma else {}
    cfg = ModelConfig(family=family, vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=layers,
                      num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4,
                      max_position_embeddings=256, tie_word_embeddings=tie or gemma, attention_bias=family == "qwen2",
                      **extra)
    torch.manual_seed(seed)
    model = Decoder(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, scale)
            elif "bias" in name:
                p.normal_(0, 0.1)
            elif gemma:  # norm weights around 1
                p.normal_(1, 0.2)
    return model.eval().requires_grad_(False)


def product_case(rows: int, bias: bool, out: int = 48, inp: int = 64):
    """A random [out, inp] weight, `rows` input rows and an optional bias, seeded by `rows`: the
    operands of one product test."""
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(out, inp, generator=g)
    x = torch.randn(rows, inp, generator=g)
    return w, x, torch.randn(out, generator=g) if bias else None


def perturbed(model, noise: float, seed: int):
    """A copy of `model` with Gaussian noise on its weights: a draft model that agrees often, not always."""
    import copy

    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise)
    return m


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """A tiny random Llama-style model with a real (tiny, trained here) BPE tokenizer and a chat
    template: what `LLM(...)`, the CLI and the bench need, in seconds and without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llm")
    text = [
        "def add(a, b): return a + b", "The quick brown fox jumps over the lazy dog.",
        "Natalia sold 48 clips in April and half as many in May.", "Translate into English: Guten Morgen",
        "Summarize the following text in a few sentences.", "What is the capital of France? Paris.",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                     unk_token="<|endoftext|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(str(path))
    torch.manual_seed(0)
    cfg = LlamaConfig(**{**TINY, "vocab_size": len(hf_tok)}, tie_word_embeddings=True,
                      eos_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"))
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(str(path))
    return path

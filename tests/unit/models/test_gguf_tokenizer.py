"""llama.cpp's byte-level BPE rules (``models.gguf_tokenizer``): each named pre-tokenizer cuts text as its Hugging
Face counterpart does, and the name is identified from how a model's own tokenizer behaves."""

from __future__ import annotations

import json

import pytest
from tokenizers import Regex, pre_tokenizers

from slmtune.models import gguf_tokenizer as g
from slmtune.models.tiny import build_tokenizer


def entries(tok):
    vocab = tok.get_vocab()
    tokens, types = g.vocab_entries(tok, max(vocab.values()) + 1)
    merges = [" ".join(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
    return tokens, types, merges


@pytest.mark.parametrize("name", list(g.PRE_TOKENIZERS))
def test_each_name_cuts_text_as_its_hugging_face_pre_tokenizer(name):
    pre = g.PRE_TOKENIZERS[name]
    hf = pre.hf()
    for text in g.CHECK_TEXTS:
        assert [p for p, _ in hf.pre_tokenize_str(text)] == g.llama_pieces(text, pre), text


def test_the_names_disagree_where_the_issue_saw_llama_cpp_go_wrong():
    # GPT-2's rule keeps the contraction together; llama3's splits off runs of three digits; smollm one digit each
    assert g.split("I'd say the lamp's on", g.PRE_TOKENIZERS["gpt-2"])[:2] == ["I", "'d"]
    assert g.split("12345", g.PRE_TOKENIZERS["llama-bpe"]) == ["123", "45"]
    assert g.split(" 2024", g.PRE_TOKENIZERS["smollm"]) == [" ", "2", "0", "2", "4"]
    assert g.split(" 2024", g.PRE_TOKENIZERS["gpt-2"]) == [" 2024"]


@pytest.mark.parametrize("name", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_identify_names_the_pre_tokenizer_a_tokenizer_was_built_with(name):
    tok = build_tokenizer()
    tok.backend_tokenizer.pre_tokenizer = g.PRE_TOKENIZERS[name].hf()
    got = g.identify(tok, *entries(tok))
    assert got.name == name
    # and under that name llama.cpp gives the model's own ids, chat markup included
    bpe = g.LlamaCppBPE(*entries(tok), got)
    text = "<|im_start|>user\nI'd pay 1,234 for the lamp's 🚀 (really)<|im_end|>\n"
    assert bpe.encode(text) == tok(text, add_special_tokens=False)["input_ids"]


def test_a_tokenizer_no_name_reproduces_is_refused_with_the_difference():
    tok = build_tokenizer()  # words split on whitespace only: not a rule llama.cpp has a name for
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_next"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    with pytest.raises(g.Unidentified, match=r"smollm: .*gpt-2: .*llama-bpe: .*qwen2: "):
        g.identify(tok, *entries(tok))


def test_token_types_follow_llama_cpps_converter():
    tok = build_tokenizer()
    tok.add_tokens(["<extra>"])  # an added, non-special token: user-defined
    tokens, types = g.vocab_entries(tok, len(tok.get_vocab()) + 2)
    ids = tok.get_vocab()
    assert types[ids["<|im_start|>"]] == g.TokenType.CONTROL
    assert types[ids["<extra>"]] == g.TokenType.USER_DEFINED
    assert types[ids["a"]] == g.TokenType.NORMAL
    assert tokens[-1] == f"[PAD{len(tokens) - 1}]" and types[-1] == g.TokenType.UNUSED

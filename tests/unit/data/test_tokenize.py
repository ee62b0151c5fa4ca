"""The loss mask, token by token: system and user tokens are ignored, assistant tokens and the end of turn trained."""

import pytest

from slmtune.data.formats import Example
from slmtune.data.tokenize import IGNORE_INDEX, PadCollator, TemplateError, encode_chat, encode_example
from slmtune.data.validate import check_file
from slmtune.models.loading import load_tokenizer
from slmtune.models.registry import resolve
from tests.helpers import chat_record, write_jsonl

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye.", "weight": 0},
    {"role": "user", "content": "Really bye"},
    {"role": "assistant", "content": "See you."},
]


def trained_segments(tok, ids, labels):
    """Decoded runs of consecutive trained tokens."""
    segs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i  # labels are the token ids themselves (the model shifts them)
            cur.append(i)
        elif cur:
            segs.append(tok.decode(cur))
            cur = []
    if cur:
        segs.append(tok.decode(cur))
    return segs


@pytest.fixture(scope="module")
def tiny_tok():
    return load_tokenizer(resolve("tiny-llama"))


def test_mask_covers_exactly_weighted_assistant_turns_and_end_of_turn(tiny_tok):
    ids, labels = encode_chat(tiny_tok, CONVERSATION)
    assert tiny_tok.decode(ids) == tiny_tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert trained_segments(tiny_tok, ids, labels) == ["Hello! How can I help?<|im_end|>\n", "See you.<|im_end|>\n"]
    # token by token: every trained token lies inside an assistant turn, and each turn's <|im_end|> is trained
    eos = tiny_tok.eos_token_id
    eos_positions = [k for k, i in enumerate(ids) if i == eos]
    trained_eos = [k for k in eos_positions if labels[k] != IGNORE_INDEX]
    assert len(eos_positions) == 7 and len(trained_eos) == 2  # system, 3 user turns, the weight-0 turn: not trained
    assert trained_eos[-1] == len(ids) - 2  # the final <|im_end|> (then "\n")


@pytest.mark.real_model
def test_mask_with_the_real_default_model_tokenizer():
    tok = load_tokenizer(resolve("smollm2-135m-instruct"))
    ids, labels = encode_chat(tok, CONVERSATION)
    assert trained_segments(tok, ids, labels) == ["Hello! How can I help?<|im_end|>\n", "See you.<|im_end|>\n"]
    assert tok.eos_token == "<|im_end|>"  # generation stops on the same token that training teaches
    # SmolLM2's template adds its own system prompt when none is given: never trained
    ids, labels = encode_chat(tok, CONVERSATION[1:3])
    assert "SmolLM" in tok.decode(ids)
    assert trained_segments(tok, ids, labels) == ["Hello! How can I help?<|im_end|>\n"]


def test_completion_mask_trains_completion_and_eos(tiny_tok):
    ex = Example(line=1, kind="completion", prompt="Translate: cat ->", completion=" chat")
    enc = encode_example(tiny_tok, ex)
    assert trained_segments(tiny_tok, enc.input_ids, enc.labels) == [" chat<|im_end|>"]


def test_non_prefix_preserving_template_is_refused(tiny_tok):
    import copy

    tok = copy.deepcopy(tiny_tok)
    # a template that renders the last message differently from earlier ones breaks prefix preservation
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}[LAST]{% endif %}"
                         "{{ m['role'] }}: {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(TemplateError, match="not prefix-preserving"):
        encode_chat(tok, CONVERSATION[1:4] + [{"role": "assistant", "content": "x"}])


def test_collator_pads_right_and_masks_padding(tiny_tok):
    batch = PadCollator(tiny_tok.pad_token_id, multiple_of=8)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5] * 9, "labels": [5] * 9}]
    )
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13
    assert batch["labels"][0, 3:].eq(IGNORE_INDEX).all() and batch["input_ids"][0, 3] == tiny_tok.pad_token_id


def test_validate_counts_tokens_and_flags_too_long_examples(tiny_tok, tmp_path):
    long = {"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [chat_record("a", "b"), long, chat_record("c", "d")])
    rep = check_file(path, tiny_tok, max_seq_length=64)
    assert [str(p).split(": ")[0] for p in rep.problems] == [f"{path}:2"]
    assert "too long after tokenization" in rep.problems[0].message
    # truncation would cut the only assistant turn: with truncate=True that example is left out, and counted
    rep = check_file(path, tiny_tok, max_seq_length=64, truncate=True)
    assert rep.problems == [] and rep.n_dropped == 1 and len(rep.encoded) == 2
    stats = check_file(path, tiny_tok, max_seq_length=4096).stats(epochs=2)
    assert stats["examples"] == 3 and stats["would_be_truncated"] == 0
    assert stats["tokens_min"] < stats["tokens_mean"] < stats["tokens_max"]
    assert stats["billed_tokens"] == 2 * stats["tokens_total"]

"""The label-position loss (logits only where a trained token follows) equals the full loss."""

import torch

from slmtune.data.formats import Example
from slmtune.data.tokenize import PadCollator, encode_example
from slmtune.models.loading import load_base_model, load_tokenizer
from slmtune.models.registry import resolve
from slmtune.training.trainer import label_position_loss


def test_label_position_loss_equals_the_full_loss_with_padding_and_its_gradients():
    d = resolve("tiny-llama")
    tok, model = load_tokenizer(d), load_base_model(d)
    exs = [Example(1, "chat", [{"role": "user", "content": "Hi there, how are you today?"},
                               {"role": "assistant", "content": "Fine, thanks."}]),
           Example(2, "chat", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello! Nice to meet you, friend."}])]
    enc = [encode_example(tok, e) for e in exs]
    batch = PadCollator(tok.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in enc])
    full = model(**batch).loss
    full.backward()
    g_full = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    sparse, logits, target = label_position_loss(model, batch)
    sparse.backward()
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.model.embed_tokens.weight.grad, g_full, rtol=1e-4, atol=1e-7)
    assert logits.shape[1] < batch["input_ids"].shape[1] - 1  # fewer positions went through the head
    assert int((target != -100).sum()) == sum(e.n_trained for e in enc)

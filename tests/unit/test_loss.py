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


def test_packing_gives_each_example_the_loss_it_has_alone_and_no_attention_across():
    from slmtune.data.tokenize import IGNORE_INDEX, PackCollator

    d = resolve("tiny-phi3")
    tok, model = load_tokenizer(d), load_base_model(d).eval()
    convs = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}],
             [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Four, of course."}],
             [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you!"}]]
    enc = [encode_example(tok, Example(i, "chat", c)) for i, c in enumerate(convs)]
    items = [{"input_ids": e.input_ids, "labels": e.labels} for e in enc]

    def per_example(logits, labels):
        return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX,
                                                 reduction="sum")

    packed = PackCollator()(items)
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits[0]
        start = 0
        for e in enc:
            n = len(e.input_ids)
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            torch.testing.assert_close(logits[start:start + n], alone, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(per_example(logits[start:start + n], torch.tensor(e.labels)),
                                       per_example(alone, torch.tensor(e.labels)), rtol=1e-4, atol=1e-4)
            start += n
        # changing the first example leaves the others' logits untouched: no attention across examples
        items[0] = {"input_ids": [5] * len(enc[0].input_ids), "labels": enc[0].labels}
        other = PackCollator()(items)
        logits2 = model(**{k: v for k, v in other.items() if k != "labels"}, use_cache=False).logits[0]
        n0 = len(enc[0].input_ids)
        torch.testing.assert_close(logits2[n0:], logits[n0:], rtol=1e-5, atol=1e-5)

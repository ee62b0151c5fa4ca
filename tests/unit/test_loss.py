"""The fused head loss (chunked, trained positions only, no full-vocabulary logits) equals the model's own loss."""

import pytest
import torch

from slmtune.data.formats import Example
from slmtune.data.tokenize import IGNORE_INDEX, PackCollator, PadCollator, encode_example
from slmtune.models.loading import load_base_model, load_tokenizer
from slmtune.models.registry import resolve
from slmtune.training.head_loss import head_loss, linear_cross_entropy, unsupported_reason


def _batch(tok):
    exs = [Example(1, "chat", [{"role": "user", "content": "Hi there, how are you today?"},
                               {"role": "assistant", "content": "Fine, thanks."}]),
           Example(2, "chat", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello! Nice to meet you, friend."}])]
    enc = [encode_example(tok, e) for e in exs]
    return enc, PadCollator(tok.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in enc])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-phi3"])
def test_fused_loss_equals_the_full_loss_with_padding_and_its_gradients(name):
    d = resolve(name)
    tok, model = load_tokenizer(d), load_base_model(d)
    assert unsupported_reason(model) is None
    enc, batch = _batch(tok)
    full = model(**batch).loss
    full.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    fused, preds, target = head_loss(model, batch)
    fused.backward()
    torch.testing.assert_close(fused, full, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():  # the head is tied/trainable here: its gradient is checked too
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
    assert len(target) == sum(e.n_trained for e in enc)  # only trained positions went through the head
    logits = model(**batch).logits[:, :-1][batch["labels"][:, 1:] != -100]
    assert torch.equal(preds, logits.argmax(-1))


def test_chunked_loss_equals_one_chunk_and_normalises_by_num_items():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(101, 16)
    t = torch.randint(0, 101, (37,))
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="sum")
    (gh_ref,) = torch.autograd.grad(ref, h)
    for chunk in (1, 5, 37, 64):
        total, _ = linear_cross_entropy(h, w, t, chunk=chunk)
        (gh,) = torch.autograd.grad(total * 0.5, h)  # the upstream gradient scales ours
        torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gh, 0.5 * gh_ref, rtol=1e-5, atol=1e-6)


def test_bf16_fused_loss_matches_fp32_within_tolerance():
    d = resolve("tiny-llama")
    tok = load_tokenizer(d)
    _, batch = _batch(tok)
    losses = {p: float(head_loss(load_base_model(d, p), batch)[0].detach()) for p in ("fp32", "bf16")}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


def test_prompt_learning_falls_back_to_the_models_own_loss():
    from peft import PromptTuningConfig, get_peft_model

    d = resolve("tiny-llama")
    model = get_peft_model(load_base_model(d), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert "virtual tokens" in unsupported_reason(model)


def test_packing_gives_each_example_the_loss_it_has_alone_and_no_attention_across():

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

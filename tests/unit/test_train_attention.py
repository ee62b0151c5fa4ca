"""Training attention (training/attention.py): the matmul path gives SDPA's outputs and gradients — causal,
padded (boolean mask), grouped-query — and a tiny Llama trains to the same loss either way."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from slmtune.training.attention import EAGER_MAX_TOKENS, train_attention

os.environ["SLMTUNE_TEST_MODELS"] = "1"


def _inputs(batch=3, heads=6, kv_heads=2, q=17, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(batch, h, q, dim, generator=g, requires_grad=True)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads), SimpleNamespace(num_key_value_groups=heads // kv_heads,
                                                                          is_causal=True, training=True)


def _both(mask):
    out = []
    for fn in (train_attention, sdpa_attention_forward):
        q, k, v, module = _inputs()
        o, _ = fn(module, q, k, v, mask, scaling=0.25)
        o.square().sum().backward()
        out.append((o.detach(), q.grad, k.grad, v.grad))
    return out


@pytest.mark.parametrize("case", ["causal", "padded"])
def test_matmul_attention_equals_sdpa_forward_and_backward(case):
    mask = None
    if case == "padded":  # row 1 has 5 padding tokens on the left, row 2 none: SDPA's boolean mask, True = attend
        keep = torch.ones(3, 17, dtype=torch.bool)
        keep[1, :5] = False
        mask = torch.ones(17, 17, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]
        mask[1, :, :5, 0] = True  # padding queries see one key (their outputs are never used)
    mine, ref = _both(mask)
    for a, b in zip(mine, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_long_batches_stay_on_sdpa(monkeypatch):
    calls = []
    import transformers.integrations.sdpa_attention as sdpa

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape[2]) or (None, None))
    q, k, v, module = _inputs(batch=1, q=EAGER_MAX_TOKENS + 1, dim=8)
    train_attention(module, q, k, v, None)
    assert calls == [EAGER_MAX_TOKENS + 1]


def test_a_tiny_run_reaches_the_same_loss_with_either_attention(tiny_config, tmp_path):
    import slmtune

    losses = {}
    for attention in ("auto", "sdpa"):
        cfg = tiny_config(model={"attention": attention}, train={"max_steps": 6},
                          run={"output": str(tmp_path / attention)})
        losses[attention] = slmtune.train(cfg).train_loss
    assert losses["auto"] is not None
    assert losses["auto"] == pytest.approx(losses["sdpa"], rel=1e-4)

"""Fused output head + cross-entropy: the loss without full-vocabulary logits.

The usual path (``model(**batch).loss``) makes logits for every position over the whole vocabulary (49k for
SmolLM2), upcasts them to fp32, runs log-softmax, and in the backward pass zero-fills and writes a gradient of the
same size. On the default model that was ~40% of a CPU training step and the largest single allocation. Here the
decoder runs without its head; only positions whose next token carries loss go through the head, in chunks of
rows, and each chunk's gradient (softmax − one-hot, times the head weight) is computed at once, in the forward pass,
so no ``[tokens, vocab]`` tensor outlives its chunk and nothing is recomputed in the backward pass.

Why by hand: transformers and PEFT have no such loss; Liger-Kernel's fused linear cross-entropy is Triton
(GPU-only). The code is small and checked against the plain loss and its gradients in tests/unit/test_loss.py.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
# Rows of logits per chunk: 128 × 49k fp32 ≈ 25 MB live at a time.
CHUNK_ROWS = 128
# Causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)`` (no soft-capping, no scaling).
PLAIN_HEAD_TYPES = {"llama", "phi3", "mistral", "qwen2", "qwen3", "smollm3", "olmo2"}


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int):
        need_h = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1]
        n = hidden.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        preds = torch.empty(n, dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, n, chunk):
            h, t = hidden[s:s + chunk], target[s:s + chunk]
            logits = torch.mm(h.to(weight.dtype), weight.t()).float()
            lse = torch.logsumexp(logits, dim=1)
            total += (lse - logits.gather(1, t[:, None])[:, 0]).sum()
            preds[s:s + chunk] = logits.argmax(1)
            if need_h or need_w:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(len(t), device=t.device), t] -= 1.0  # d(sum of losses)/d(logits)
                g = probs.to(weight.dtype)
                if need_h:
                    grad_h[s:s + chunk] = torch.mm(g, weight).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(g.t().float(), h.float())
        ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
        ctx.need = (need_h, need_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(preds)
        return total, preds

    @staticmethod
    def backward(ctx, grad_total, _grad_preds):
        saved = list(ctx.saved_tensors)
        need_h, need_w = ctx.need
        gh = gw = None
        if need_h:
            gh = saved.pop(0)
            gh = gh * grad_total.to(gh.dtype)
        if need_w:
            gw = (saved.pop(0) * grad_total).to(ctx.weight_dtype)
        return gh, gw, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         chunk: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over rows of ``cross_entropy(hidden @ weight.T, target)`` and the argmax predictions.

    ``hidden``: [N, H], ``weight``: [V, H] (the output head), ``target``: [N] (no ignored entries). Gradients flow to
    ``hidden`` and, if it requires them, to ``weight``.
    """
    return _LinearCrossEntropy.apply(hidden, weight, target, chunk)


def unsupported_reason(model) -> str | None:
    """Why the fused loss cannot run on this model (None: it can)."""
    from peft import PeftModel, PromptLearningConfig

    if isinstance(model, PeftModel):
        if isinstance(model.active_peft_config, PromptLearningConfig):
            return "prompt-learning methods prepend virtual tokens"
        model = model.get_base_model()
    mtype = getattr(model.config, "model_type", "")
    if mtype not in PLAIN_HEAD_TYPES:
        return f"model type {mtype!r} is not known to compute logits as a plain linear head"
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return "the output head is adapted or has a bias"
    return None


def head_loss(model, inputs: dict, num_items_in_batch=None):
    """(mean loss, predictions, targets) at the positions whose next token carries loss.

    Normalised like the model's own loss: by ``num_items_in_batch`` under gradient accumulation, else by this
    batch's count of trained tokens. Call only where ``unsupported_reason(model)`` is None.
    """
    from peft import PeftModel

    causal = model.get_base_model() if isinstance(model, PeftModel) else model
    labels = inputs["labels"]
    fwd = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = causal.get_decoder()(**fwd, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    tgt = target[mask]
    total, preds = linear_cross_entropy(hidden[:, :-1][mask], causal.get_output_embeddings().weight, tgt)
    denom = num_items_in_batch if num_items_in_batch is not None else tgt.numel()
    if isinstance(denom, torch.Tensor):
        denom = denom.to(total.device).clamp(min=1)
    else:
        denom = max(denom, 1)
    return total / denom, preds, tgt

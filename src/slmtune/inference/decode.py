"""The decode step of Llama-style models in a few fused operations: what the batching engine runs for every token.

A decode step is one query token per running row. Through transformers' modules it costs ~40 tensor operations and
as many Python calls per layer (hooks, keyword plumbing, the mask and cache interfaces); at one to eight rows on a
135M model that dispatch, not the matmuls, was most of the step. Here the same step is one flat loop over the
layers: an RMS norm, **one** matmul for q/k/v (their weights fused into one tensor), rotary embedding on the joined
q/k heads, the slot cache's write and grouped-query attention (keys and values kept in fp32 for a bf16 model: the
one-query matmuls are 2-3x faster than in bf16), the output projection, an RMS norm, **one** matmul for gate/up,
SiLU x up, the down projection. Prefill (a prompt's chunk: many queries a row) runs the same loop with SDPA for
the attention where ``LeanDecoder.prefills`` says so, else transformers' forward.

The fused weights are not a copy: each model's own ``q_proj.weight`` / ``k_proj`` / ``v_proj`` (``gate_proj`` /
``up_proj``) becomes a view into the fused tensor, so prefill, decode and anything that changes the weights in
place (the rollout engine's adapter merge, followed by ``refresh``) see one set of numbers. Phi-3 arrives fused.
Projections multiply by a copy in oneDNN's packed layout (``_Projection``): bf16 ones where the CPU has fast bf16,
fp32 ones where it has not (AVX2-only CPUs, where ``auto`` serves fp32). Per-row LoRA adapters (``lora_batch``) are
added per projection group by one packed pair of matmuls (``_FusedLoRA``).

fp16 weights (``weights="fp16"``, ``slmtune serve --decode fp16``; what ``slmtune serve`` picks by itself where
``auto`` serves an fp32 model on a CPU without fast bf16, :func:`prefers_fp16`): each projection and the output
head as fbgemm's packed fp16 matrix, multiplied with fp32 activations and fp32 sums
(``torch.ops.quantized.linear_dynamic_fp16``, AVX2/F16C kernels). A decode step reads every weight once, so half
the bytes is what one chat needs on a memory-bound CPU: on an AVX2-only EPYC, 30 layers' projections at one row
19 ms against 36 packed fp32, 31 against 56 at 8 rows, still ahead at 320 (docs/serving.md). Only the weights are
rounded (to 11 significant bits: closer to fp32 than the bf16 that ``auto`` serves on CPUs with fast bf16); the
agreement with fp32 is measured and stated, and ``--precision fp32`` keeps PyTorch's fp32 numbers.

int8 weights (``weights="int8"``, ``slmtune serve --decode int8``): each projection and the output head also as
int8 with one bf16 scale per output channel, multiplied by ``torch._weight_int8pack_mm`` in steps of few rows.
Further from exact than fp16: the agreement is measured (docs/serving.md), so it is an opt-in.

Written by hand because neither transformers nor PEFT has a decode path without per-module dispatch, and
``torch.compile`` of one layer of this step measured no faster (docs/serving.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmtune.models.loading import available_memory_mb, cpu_bf16

ARCHITECTURES = ("llama", "mistral", "qwen2", "phi3")


def unsupported(model) -> str | None:
    """Why ``model``'s decode cannot take the lean path (None: it can)."""
    config = model.config
    if config.model_type not in ARCHITECTURES:
        return f"architecture {config.model_type}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act}"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(inner, "layers"):
        return "unexpected module layout"
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        names = [(attn, "qkv_proj")] if hasattr(attn, "qkv_proj") else [(attn, "q_proj"), (attn, "k_proj"),
                                                                          (attn, "v_proj")]
        names += [(mlp, "gate_up_proj")] if hasattr(mlp, "gate_up_proj") else [(mlp, "gate_proj"), (mlp, "up_proj")]
        names += [(attn, "o_proj"), (mlp, "down_proj")]
        if any(type(getattr(owner, n, None)) is not torch.nn.Linear for owner, n in names):  # quantized, wrapped
            return "layers that are not plain linear layers"
    if type(getattr(model, "lm_head", None)) is not torch.nn.Linear:
        return "an output head that is not a plain linear layer"
    return None


def _fuse(parent: torch.nn.Module, names: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) tensor for ``names`` of ``parent``; each module's own parameter becomes a view of it."""
    modules = [getattr(parent, n) for n in names]
    weight = torch.cat([m.weight.detach() for m in modules])
    has_bias = [m.bias is not None for m in modules]
    bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                      for m in modules]) if any(has_bias) else None
    start = 0
    for m in modules:
        n = m.out_features
        m.weight = torch.nn.Parameter(weight[start:start + n], requires_grad=False)
        if m.bias is not None:
            m.bias = torch.nn.Parameter(bias[start:start + n], requires_grad=False)
        start += n
    return weight, bias


DECODE_PATHS = ("auto", "transformers", "fp16", "int8")


def lean_decoder(model, decode: str = "auto") -> LeanDecoder | None:
    """The decode path for ``model``: ``auto`` takes the lean one on the model's own weights where it covers the
    model (else transformers' forward, None), ``transformers`` always the latter, ``fp16`` / ``int8`` the lean one
    with those weights (an error where it cannot be had)."""
    if decode not in DECODE_PATHS:
        raise ValueError(f"decode must be one of {', '.join(DECODE_PATHS)}, not {decode!r}")
    if decode == "transformers":
        return None
    if decode == "auto":
        return None if unsupported(model) else LeanDecoder(model)
    return LeanDecoder(model, weights=decode)


def prefers_fp16(model) -> bool:
    """Whether the fp16 weights are the faster form for ``model`` here, the choice ``slmtune serve`` makes when both
    its precision and its decode are ``auto``: an fp32 model on a CPU without fast bf16 (AVX2-only ones, AVX512
    ones without BF16: where ``auto`` resolved to fp32), on the lean path, with fbgemm's kernels in this torch build
    and room for the fp16 copy (``_copy_fits``)."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return bool(weights) and weights[0].dtype == torch.float32 and weights[0].device.type == "cpu" \
        and not cpu_bf16() and unsupported(model) is None and fp16_available() is None \
        and _copy_fits(model, bytes_per_param=2)


# The most rows a step multiplies by the int8 weights; larger steps use the other form. Packed bf16 weights
# (AVX512-BF16 / AMX) win from 8 rows; against fp32 ones (AVX2-only CPUs, where oneDNN has no bf16) the int8 kernel
# stays ahead up to 8 rows (the default model on an AVX2-only EPYC, a step: 8 rows 58 ms against 66 packed fp32,
# 16 rows 104 against 82; docs/serving.md).
INT8_MAX_ROWS = 4
INT8_MAX_ROWS_FP32 = 8
# fp32 weights are packed only where the copy takes at most this share of the memory available when the lean step is
# built (the default model's copy is 540 MB; Phi-3-mini's, 15 GB, would not fit beside its own weights on 24 GB).
FP32_PACK_SHARE = 0.5


class _Projection:
    """One (fused) projection of the lean step: the model's own weight, and the form the step multiplies by.

    ``model``: the weights in oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's
    CPU backend packs with) where :func:`packs` says so and ``pack`` allows. bf16: the same products as
    ``F.linear`` (checked bit for bit in the tests), 1.6× faster on 30 layers of the default model at one row,
    because the unpacked call reorders the weight on every call. fp32 (CPUs without fast bf16): within rounding of
    ``F.linear``'s MKL products (not the same bits; greedy tokens and log-probabilities checked against
    transformers in the tests) and 1.3–1.8× faster at 1–32 rows on an AVX2-only AMD EPYC, where MKL's small-row
    kernels are slow. Unpacked weights go through ``F.linear``. ``int8``: one bf16 scale per output channel,
    ``torch._weight_int8pack_mm``, for steps of up to ``int8_rows`` rows; its kernel is built for few rows (at 32
    clients it served 432 tokens/s against the packed bf16 weights' 609), so larger steps use the packed (or the
    model's own) weights, kept beside the int8 ones; against fp32 ones it stays ahead up to ``INT8_MAX_ROWS_FP32``.
    ``fp16``: fbgemm's packed fp16 matrix (bias folded in), fp32 activations and sums, at every row count (it
    measured faster than packed fp32 from 1 to 320 rows); the only copy, so no fp32 one is packed beside it.

    ``widen(a)``: the packed copy then also holds the rows of ``a`` (the stacked LoRA ``A`` matrices that read the
    same input) after the weight's own, so one call gives both the projection and every adapter's ``A x``
    (:meth:`wide`); plain calls return the projection's columns of that product (bit-identical to the narrow
    one: oneDNN computes each output column the same way whatever the width, checked in the tests)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mode: str, pack: bool = True):
        self.weight, self.bias, self.mode, self.pack = weight, bias, mode, pack
        self.refresh()

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def refresh(self) -> None:
        """Derive the multiplied form again from the weight (after it changed in place); drops any widening."""
        w = self.weight.detach()
        self.packed = self.q = self.scale = None
        self.packed_bias, self.extra = self.bias, 0  # the bias of the packed product (widened: + zeros)
        if self.mode == "int8":
            wf = w.float()
            scale = wf.abs().amax(dim=1).clamp(min=1e-8) / 127.0
            self.q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            self.scale = scale.to(torch.bfloat16)
        if self.mode == "fp16":
            self.packed = torch.ops.quantized.linear_prepack_fp16(w.float(), None if self.bias is None
                                                                  else self.bias.detach().float())
        elif self.pack and w.device.type == "cpu" and packs(w.dtype):
            self.packed = _pack(w)
        self.int8_rows = INT8_MAX_ROWS if self.packed is not None and w.dtype == torch.bfloat16 else INT8_MAX_ROWS_FP32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.q is not None and x.numel() <= self.int8_rows * x.shape[-1]:
            shape = x.shape
            out = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.q, self.scale)
            out = out.reshape(*shape[:-1], out.shape[-1]).to(x.dtype)
            return out if self.bias is None else out + self.bias
        if self.packed is not None:
            out = self.wide(x)
            return out[..., :self.out_features] if self.extra else out
        return F.linear(x, self.weight, self.bias)

    def widenable(self) -> bool:
        """Whether the weight is multiplied packed for oneDNN (what :meth:`widen` extends). Not fbgemm's fp16
        matrix: packing it takes ~5× oneDNN's time (1.7 s for the default model's layers on an AVX2 EPYC), and a
        widening happens on the engine's thread whenever the loaded adapters change, so there ``A`` stays apart."""
        return self.packed is not None and self.mode == "model"

    def widen(self, a: torch.Tensor) -> None:
        """Pack the weight again with ``a``'s rows after its own (replacing the packed copy: the memory grows by
        ``a`` alone)."""
        w = self.weight.detach()
        self.packed = None  # the old packed copy goes before the new one is made
        self.packed = _pack(torch.cat([w, a.to(w.dtype)]))
        self.extra = a.shape[0]
        self.packed_bias = None if self.bias is None else torch.cat([self.bias.detach(),
                                                                      self.bias.new_zeros(self.extra)])

    def wide(self, x: torch.Tensor) -> torch.Tensor:
        """The packed product, widened or not: ``[..., out_features + extra]``."""
        if self.mode == "fp16":
            out = torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)
            return out if x.dtype == torch.float32 else out.to(x.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.packed_bias, "none", [], "")


def _pack(w: torch.Tensor) -> torch.Tensor:
    """``w`` in oneDNN's blocked layout. The layout depends on the batch size it is packed for: bf16 weights are
    packed for one row (17–20 GB/s at every shape of the default model whatever the hint, on AVX512-BF16); fp32 ones
    with no hint, which on an AVX2-only EPYC took 30 layers' matmuls at 8 rows from 64–66 ms (packed for one row) to
    43–49 ms and was no slower at one row (28–34 ms)."""
    w = w.contiguous()
    if w.dtype == torch.bfloat16:
        return torch.ops.mkldnn._reorder_linear_weight(w, 1)
    return torch.ops.mkldnn._reorder_linear_weight(w)


def packs(dtype: torch.dtype) -> bool:
    """Whether the lean step multiplies CPU weights of ``dtype`` packed for oneDNN here: the torch build has the
    packed linear kernels (x86 builds do), and bf16 where the CPU does bf16 in oneDNN (``cpu_bf16``: AVX512-BF16 or
    AMX), fp32 where it does not (AVX2-only CPUs, where fp32 is what ``auto`` serves)."""
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    return cpu_bf16() if dtype == torch.bfloat16 else dtype == torch.float32 and not cpu_bf16()


def int8_available() -> str | None:
    """Why the int8 weight kernel cannot be used here (None: it can)."""
    try:
        _Projection(torch.randn(16, 32), None, "int8")(torch.randn(2, 32, dtype=torch.bfloat16))
    except (RuntimeError, AttributeError) as e:
        return f"torch._weight_int8pack_mm is not available on this build ({e})"
    return None


def fp16_available() -> str | None:
    """Why fbgemm's fp16 weight kernel cannot be used here (None: it can): x86 builds of torch have it."""
    try:
        _Projection(torch.randn(16, 32), None, "fp16")(torch.randn(2, 32))
    except (RuntimeError, AttributeError) as e:
        return f"torch.ops.quantized.linear_dynamic_fp16 (fbgemm) is not available on this build ({e})"
    return None


class _FusedLoRA:
    """The loaded adapters of the layers that read one input (q/k/v, or gate/up, or one layer alone): their ``A``s
    stacked (all slots) and their ``B``s placed block-diagonally at each layer's output columns, both packed like
    the base weights. Per row the result is each layer's own ``B @ A @ x × scale`` (the other slots' and layers'
    blocks add zeros). Measured on the default model at one row: q/k/v's three unpacked pairs 111 µs, fused and
    packed 31 µs a layer. Built again when an adapter loads or unloads, over the slots up to the highest one loaded
    (``slots``), not the whole cache.

    Where the base projection is packed, the stacked ``A`` goes into it (``_Projection.widen``): one matmul
    gives the projection and ``A x`` together, so an adapted projection costs one small matmul more than the base
    instead of two. At these sizes a matmul call costs ~30 µs whatever its width: 8 rows of the default model on one
    adapter took 37.9 ms a step against 41.9 with ``A`` apart (base ~29; AMD EPYC, 2 cores;
    ``benchmarks/decode_step.py --apart``). The products are the same bits either way.

    Beside fbgemm's fp16 base weights (never widened: see ``_Projection.widenable``) ``A`` and ``B`` are fp16
    matrices too: 8 rows on one adapter 98.6 against 120.3 ms a step with them in packed fp32 (AVX2-only EPYC)."""

    def __init__(self, layers: list[tuple[object, int, int]], base: _Projection, slots: int):
        self.ranks = [layer.rank for layer, _, _ in layers]
        a = torch.cat([layer.A[:slots * layer.rank] for layer, _, _ in layers])  # [Σ slots × rank, in]
        b = a.new_zeros((a.shape[0], base.out_features))
        row = 0
        for layer, start, width in layers:
            n = slots * layer.rank
            b[row:row + n, start:start + width] = layer.B[:n]
            row += n
        self.base = base
        self.a = None
        mode = "fp16" if base.mode == "fp16" else "model"  # fp16 bases: the adapters' matrices in fp16 too
        if base.widenable():
            base.widen(a)
        else:  # unpacked weights (F.linear), int8 or fp16 ones: A apart
            self.a = _Projection(a, None, mode, base.pack)  # x @ Aᵀ
        self.b = _Projection(b.t().contiguous(), None, mode, base.pack)  # h @ B

    def __call__(self, x: torch.Tensor, masks: dict[int, torch.Tensor]) -> torch.Tensor:
        """The projection of ``x`` with each row's adapter added."""
        mask = masks[self.ranks[0]] if len(self.ranks) == 1 else torch.cat([masks[r] for r in self.ranks], -1)
        if self.a is None:
            both = self.base.wide(x)
            n = self.base.out_features
            return both[..., :n] + self.b(both[..., n:] * mask)
        return self.base(x) + self.b(self.a(x) * mask)


class _Block:
    """One decoder layer's tensors for the lean step."""

    def __init__(self, layer, index: int, heads: int, kv_heads: int, head_dim: int, mode: str, pack: bool):
        attn, mlp = layer.self_attn, layer.mlp
        self.index = index
        self.prefix = f"model.layers.{index}."
        self.norm1, self.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.norm2, self.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
        fused = {"qkv": ("self_attn", ["qkv_proj"], ["q_proj", "k_proj", "v_proj"]),
                 "gu": ("mlp", ["gate_up_proj"], ["gate_proj", "up_proj"])}
        self.parts: dict[str, tuple[tuple[str, int, int], ...]] = {}  # LoRA-adaptable modules: path, columns
        for key, (owner, whole, split) in fused.items():
            parent = getattr(layer, owner)
            names = whole if hasattr(parent, whole[0]) else split
            if names is whole:  # Phi-3: already one module
                w, bias = getattr(parent, whole[0]).weight, getattr(parent, whole[0]).bias
            else:
                w, bias = _fuse(parent, names)
            setattr(self, f"{key}_w", w)
            setattr(self, f"{key}_b", bias)
            cols, start = [], 0
            for n in names:
                width = getattr(parent, n).out_features
                cols.append((f"{self.prefix}{owner}.{n}", start, width))
                start += width
            self.parts[key] = tuple(cols)
        self.o, self.down = attn.o_proj, mlp.down_proj
        self.parts["o"] = ((f"{self.prefix}self_attn.o_proj", 0, self.o.out_features),)
        self.parts["down"] = ((f"{self.prefix}mlp.down_proj", 0, self.down.out_features),)
        self.splits = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        self.inter = self.gu_w.shape[0] // 2
        self.scaling = getattr(attn, "scaling", head_dim ** -0.5)
        self.proj = {"qkv": _Projection(self.qkv_w, self.qkv_b, mode, pack),
                     "gu": _Projection(self.gu_w, self.gu_b, mode, pack),
                     "o": _Projection(self.o.weight, self.o.bias, mode, pack),
                     "down": _Projection(self.down.weight, self.down.bias, mode, pack)}


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The Llama RMS norm in one ``torch.rms_norm`` call (fp32 inside; on CPU ATen runs it as ~12 operations, not
    one kernel: ~20 µs at ``[1, 576]`` on an AMX Xeon). transformers rounds the normalised value to bf16 before the
    weight's product: in bf16 the two differ in the last bit now and then."""
    return torch.rms_norm(x, (x.shape[-1],), weight, eps)


def _copy_fits(model, bytes_per_param: int = 4) -> bool:
    """Whether a packed copy of ``model``'s linear weights may be made: always for bf16 ones (half of fp32's bytes;
    what serving bf16 has always cost), for fp32 ones where the copy (``bytes_per_param`` a weight: 4 for packed
    fp32, 2 for fp16) takes at most ``FP32_PACK_SHARE`` of the memory available now."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not weights or weights[0].dtype != torch.float32:
        return True
    size = sum(w.numel() for w in weights) * bytes_per_param
    return size <= FP32_PACK_SHARE * available_memory_mb() * 1024 * 1024


class LeanDecoder:
    """The decode forward of one Llama-style model over a :class:`~slmtune.inference.kv_slots.SlotCache`."""

    def __init__(self, model, *, weights: str = "model", pack: bool | None = None):
        """``pack``: make the packed copies where this CPU packs the weights' dtype (None: where the copy fits,
        ``_copy_fits``), or never (False: ``F.linear`` on the model's own weights)."""
        reason = unsupported(model)
        if reason:
            raise ValueError(f"the lean decode path does not cover {reason}")
        if weights not in ("model", "int8", "fp16"):
            raise ValueError(f"decode weights must be 'model', 'fp16' or 'int8', not {weights!r}")
        if weights == "int8" and (why := int8_available()):
            raise ValueError(why)
        if weights == "fp16" and (why := fp16_available()):
            raise ValueError(why)
        if weights == "fp16" and (device := model.lm_head.weight.device).type != "cpu":
            raise ValueError(f"fp16 decode weights are fbgemm's, a CPU kernel; this model is on {device}")
        config = model.config
        self.model = model
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.norm, self.eps = inner.norm.weight, inner.norm.variance_epsilon
        self.head = model.lm_head
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.weights = weights  # each projection's mode: "model", "fp16" or "int8"
        self.pack = _copy_fits(model) if pack is None else pack
        self.blocks = [_Block(layer, i, self.heads, self.kv_heads, self.head_dim, weights, self.pack)
                       for i, layer in enumerate(inner.layers)]
        self.head_proj = _Projection(self.head.weight, self.head.bias, weights, self.pack)
        # Prompts' chunks (many queries a row) take this path too where that was measured faster than transformers'
        # forward: unpacked weights (the same matmuls, less dispatch) and packed fp32 ones (an AVX2-only EPYC, fp32:
        # one ~40-token prompt 132 against 156 ms, eight at once 717 against 719; decode_step.py --prefill).
        # fbgemm's fp16 matrices too (320 rows: 30 layers 570 against packed fp32's 607 ms, the same EPYC).
        # Packed bf16 weights are packed for one row; their prefill has not been measured, so it stays on
        # transformers' forward.
        self.prefills = not (self.head_proj.packed is not None and self.head.weight.dtype == torch.bfloat16)
        self._fused: list[dict] = []
        self._fused_version = -1

    def refresh(self) -> None:
        """The model's weights changed in place (the rollout engine merged a new adapter step): pack them again
        (and widen them again with the adapters at the next step that has any)."""
        for b in self.blocks:
            for proj in b.proj.values():
                proj.refresh()
        self.head_proj.refresh()
        self._fused_version = -1

    def _adapters(self, lora) -> list[dict]:
        """This step's fused adapters per block, rebuilt when the loaded set changed, over the slots up to the
        highest one loaded (``lora.used``, the width of ``lora.masks``)."""
        if self._fused_version != lora.version:
            self._fused = []
            for b in self.blocks:
                per: dict = {}
                for key, parts in b.parts.items():
                    layers = [(lora.layers[p], start, width) for p, start, width in parts
                              if p in lora.layers and lora.layers[p].rank]
                    per[key] = _FusedLoRA(layers, b.proj[key], lora.used) if layers and lora.used else None
                self._fused.append(per)
            self._fused_version = lora.version
        return self._fused

    @staticmethod
    def _project(b: _Block, adapters: dict | None, key: str, masks, x: torch.Tensor) -> torch.Tensor:
        """The projection ``key`` of block ``b``, with each row's adapter added where this step has adapters."""
        fused = adapters[key] if adapters is not None else None
        return b.proj[key](x) if fused is None else fused(x, masks)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache, mask: torch.Tensor | None,
                lora=None) -> torch.Tensor:
        """Logits ``[rows, vocab]`` (fp32) of each row's last query: ``tokens`` and ``positions`` are ``[rows, q]``
        (one query a row in a decode step, a prompt's chunk in a prefill); ``cache`` has been planned for this
        forward; ``mask`` is ``[rows, 1, q, kv]`` additive, or None when every query sees all of ``0..position``
        (a decode step where every row is at the same position)."""
        rows, q, heads, kv_heads, dim = tokens.shape[0], tokens.shape[1], self.heads, self.kv_heads, self.head_dim
        x = F.embedding(tokens, self.embed)  # [rows, q, hidden]
        cos, sin = self.rotary(x, positions)  # [rows, q, rotary dim]
        half = cos.shape[-1] // 2
        # rotate_half(x) * sin == cat(x2, x1) * cat(-sin1, sin2): the sign goes into the table once per step
        cos, sin = cos[:, :, None], torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, :, None]
        partial = cos.shape[-1] != dim
        qn, kn, _ = self.blocks[0].splits if self.blocks else (0, 0, 0)
        groups = heads // kv_heads
        fused, masks = (self._adapters(lora), lora.masks) if lora is not None and lora.masks is not None \
            else (None, None)
        for b in self.blocks:
            adapters = fused[b.index] if fused is not None else None
            h = _rms_norm(x, b.norm1, b.eps1)
            qkv = self._project(b, adapters, "qkv", masks, h)
            qk = qkv[..., :qn + kn].view(rows, q, heads + kv_heads, dim)  # q and k heads side by side
            if partial:
                r = cos.shape[-1]
                rot = qk[..., :r]
                qk = torch.cat((rot * cos + torch.cat((rot[..., half:], rot[..., :half]), -1) * sin, qk[..., r:]), -1)
            else:
                qk = qk * cos + torch.cat((qk[..., half:], qk[..., :half]), -1) * sin
            k = qk[:, :, heads:].transpose(1, 2)  # [rows, kv heads, q, dim]
            v = qkv[..., qn + kn:].view(rows, q, kv_heads, dim).transpose(1, 2)
            keys, values = cache.layers[b.index].update(k, v)
            if q == 1:  # two small batched matmuls, the query heads grouped by their key/value head
                qg = qk[:, 0, :heads].reshape(rows, kv_heads, groups, dim).to(keys.dtype)
                scores = torch.matmul(qg, keys.transpose(-1, -2))
                scores.mul_(b.scaling)
                if mask is not None:
                    scores = scores + mask[:, :, :, :keys.shape[-2]]
                probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
                a = torch.matmul(probs, values).reshape(rows, 1, heads * dim).to(x.dtype)
            else:  # a prompt's chunk: SDPA's blocked kernels (they never hold the q × kv scores whole)
                qh = qk[:, :, :heads].transpose(1, 2).to(keys.dtype)  # [rows, heads, q, dim]
                a = F.scaled_dot_product_attention(
                    qh, keys, values, attn_mask=None if mask is None else mask[..., :keys.shape[-2]].to(keys.dtype),
                    scale=b.scaling, enable_gqa=groups > 1).transpose(1, 2).reshape(rows, q, heads * dim).to(x.dtype)
            o = self._project(b, adapters, "o", masks, a)
            x = x + o
            h = _rms_norm(x, b.norm2, b.eps2)
            gu = self._project(b, adapters, "gu", masks, h)
            m = F.silu(gu[..., :b.inter]) * gu[..., b.inter:]
            d = self._project(b, adapters, "down", masks, m)
            x = x + d
        x = _rms_norm(x[:, -1:], self.norm, self.eps)
        return self.head_proj(x[:, -1]).float()

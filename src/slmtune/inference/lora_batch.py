"""Many LoRA adapters on one base model, each batch row with its own adapter (or none), two matmuls per layer.

Hand-written because PEFT's mixed-adapter forward (``adapter_names``) loops over the adapters of a batch in every
layer (gather the rows, two matmuls, scatter back) and registers hooks on every LoRA layer per call: on the default
model at 8 rows that costs 20-35 ms a step, as much as the base model's own step. Here each targeted linear layer
keeps the loaded adapters side by side: ``A`` as ``[slots * r, in]`` and ``(B * scale).T`` as ``[slots * r, out]``.
A step computes ``x @ A.T`` for the slots up to the highest one it uses, zeroes the columns that are not the row's
own slot (a mask built once per step) and multiplies by ``B``: the result is exactly each row's own
``B @ A @ x * scale``, the other slots adding zeros. Rows on the plain base have an all-zero mask; a step with no
adapter rows skips the hooks.

Served this way: LoRA and rsLoRA adapters on linear layers (any rank, padded to the largest). Everything else
(DoRA, ``modules_to_save``, rank/alpha patterns, embedding LoRA, PiSSA/OLoRA-initialised adapters whose base
weights move at load) goes to an engine of its own; :func:`unmixable` says why.
"""

from __future__ import annotations

import math

import torch

from slmtune.methods import of_adapter

PREFIX = "base_model.model."


def unmixable(config: dict) -> str | None:
    """Why an adapter cannot share the base's batch (None: it can)."""
    method = of_adapter(config)
    if method is None or not method.batchable:
        return f"{method.name if method else config.get('peft_type')} is not plain LoRA"
    checks = {"modules_to_save": "modules_to_save", "rank_pattern": "rank_pattern",
              "alpha_pattern": "alpha_pattern", "fan_in_fan_out": "fan_in_fan_out", "lora_bias": "lora_bias",
              "target_parameters": "target_parameters", "layer_replication": "layer_replication",
              "trainable_token_indices": "trainable tokens"}
    for key, label in checks.items():
        if config.get(key):
            return label
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in ("gaussian", "true"):
        return f"init_lora_weights={init} (moves the base weights at load)"
    return None


class _Layer:
    def __init__(self, module: torch.nn.Linear, owner: BatchedLoRA):
        self.module = module
        self.owner = owner
        out_f, in_f = module.weight.shape
        self.rank = 0
        self.A = module.weight.new_zeros((0, in_f))  # [slots * r, in]
        self.B = module.weight.new_zeros((0, out_f))  # [slots * r, out]: B.T * scale, so a slot prefix is contiguous
        self.handle = module.register_forward_hook(self._hook)

    def ensure_rank(self, r: int) -> None:
        if r <= self.rank:
            return
        s = self.owner.capacity
        A = self.A.new_zeros((s, r, self.A.shape[1]))
        B = self.B.new_zeros((s, r, self.B.shape[1]))
        if self.rank:
            A[:, :self.rank] = self.A.view(s, self.rank, -1)
            B[:, :self.rank] = self.B.view(s, self.rank, -1)
        self.rank, self.A, self.B = r, A.view(s * r, -1), B.view(s * r, -1)

    def put(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None, scale: float) -> None:
        r = self.rank
        self.A[slot * r:(slot + 1) * r] = 0
        self.B[slot * r:(slot + 1) * r] = 0
        if a is not None:
            k = a.shape[0]
            self.A[slot * r:slot * r + k] = a.to(self.A.dtype)
            self.B[slot * r:slot * r + k] = (b.float() * scale).t().to(self.B.dtype)

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """What this step's adapters add to the layer's output for input ``x`` (None: no row has one here)."""
        masks = self.owner.masks
        if masks is None or not self.rank:
            return None
        mask = masks[self.rank]
        k = mask.shape[-1]  # only the slots up to the highest one this step uses
        h = torch.matmul(x, self.A[:k].t()) * mask
        return torch.matmul(h, self.B[:k])

    def _hook(self, module, inputs, output):
        delta = self.delta(inputs[0])
        return output if delta is None else output + delta


class BatchedLoRA:
    """The adapters loaded into one base model, in ``capacity`` slots."""

    def __init__(self, model: torch.nn.Module, capacity: int):
        self.model = model
        self.capacity = max(1, capacity)
        self.layers: dict[str, _Layer] = {}
        self.slots: dict[str, int] = {}
        # rank → [rows, 1, used × rank] for this step: row r's columns are those of its adapter's slot
        self.masks: dict[int, torch.Tensor] | None = None
        self.version = 0  # bumped whenever an adapter loads or unloads (the lean step rebuilds its fused copy)

    def __contains__(self, name: str) -> bool:
        return name in self.slots

    def __len__(self) -> int:
        return len(self.slots)

    def load(self, name: str, config: dict, weights: dict[str, torch.Tensor]) -> None:
        """Put adapter ``name`` (its adapter_config.json and safetensors weights) into a free slot."""
        if name in self.slots:
            return
        free = sorted(set(range(self.capacity)) - set(self.slots.values()))
        if not free:
            raise RuntimeError("no free adapter slot (unload one first)")
        r = int(config["r"])
        alpha = float(config.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in weights.items():
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in key:
                    path = key.split(marker)[0].removeprefix(PREFIX)
                    pairs.setdefault(path, {})[part] = value
                    break
            else:
                raise ValueError(f"unexpected tensor in a LoRA adapter: {key}")
        for path, ab in pairs.items():
            module = self.model.get_submodule(path)
            if not isinstance(module, torch.nn.Linear) or set(ab) != {"lora_A", "lora_B"}:
                raise ValueError(f"{path}: LoRA on a {type(module).__name__} cannot be batched")
            if ab["lora_A"].shape != (r, module.in_features) or ab["lora_B"].shape != (module.out_features, r):
                raise ValueError(f"{path}: adapter shapes {tuple(ab['lora_A'].shape)}, "
                                 f"{tuple(ab['lora_B'].shape)} do not fit the base layer")
        slot = free[0]
        for path, ab in pairs.items():
            layer = self.layers.get(path) or self.layers.setdefault(path, _Layer(self.model.get_submodule(path), self))
            layer.ensure_rank(r)
            layer.put(slot, ab["lora_A"], ab["lora_B"], scale)
        for path, layer in self.layers.items():
            if path not in pairs:
                layer.put(slot, None, None, 0.0)  # a slot reused from an adapter that targeted this layer
        self.slots[name] = slot
        self.version += 1

    def unload(self, name: str) -> None:
        slot = self.slots.pop(name)
        for layer in self.layers.values():
            layer.put(slot, None, None, 0.0)
        self.version += 1

    @property
    def used(self) -> int:
        """Slots up to the highest one loaded: what the masks and the lean step's fused adapters cover (one adapter
        in a cache of 8: an eighth of the cache's width)."""
        return max(self.slots.values(), default=-1) + 1

    def plan(self, rows: list[str | None], device) -> None:
        """Before a forward: row i uses adapter ``rows[i]`` (None: the plain base)."""
        if not any(rows):
            self.masks = None
            return
        slot = torch.tensor([self.slots[n] if n else -1 for n in rows], device=device)
        dtype = next(iter(self.layers.values())).A.dtype
        self.masks = {}
        for r in {layer.rank for layer in self.layers.values() if layer.rank}:
            cols = torch.arange(self.used * r, device=device) // r
            self.masks[r] = (cols[None, :] == slot[:, None]).to(dtype)[:, None, :]

"""The LoRA adapters of one base model in its batch: a bounded LRU whose files load off the scheduler thread."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from slmtune.inference.lora_batch import BatchedLoRA, unmixable

if TYPE_CHECKING:
    from slmtune.inference.batching import BatchEngine

log = logging.getLogger("slmtune.serving")


class AdapterCache:
    """A bounded LRU of LoRA adapters in one base model (:class:`BatchedLoRA`). Files are read on a loader thread;
    the (fast) copy into the model's adapter slots happens on the scheduler thread between two steps, so decoding
    never waits on disk."""

    def __init__(self, engine: BatchEngine, capacity: int):
        self.engine = engine
        self.lora = BatchedLoRA(engine.model, capacity)
        self.loaded: OrderedDict[str, Path] = OrderedDict()
        self.paths: dict[str, Path] = {}
        self.reading: dict[str, Future] = {}
        self.failed: dict[str, BaseException] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="slmtune-adapter-read")

    def register(self, name: str, path: Path) -> None:
        self.paths.setdefault(name, Path(path))

    @staticmethod
    def _read(path: Path):
        from peft.utils import load_peft_weights

        config = json.loads((Path(path) / "adapter_config.json").read_text())
        reason = unmixable(config)
        if reason:
            raise ValueError(f"{path}: {reason}: this adapter cannot share its base's batch")
        return config, load_peft_weights(str(path), device="cpu")

    def ready(self, name: str) -> bool:
        """On the scheduler thread: True once ``name`` is in the model (loading it if needed)."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return True
        if name in self.failed:
            return False
        fut = self.reading.get(name)
        if fut is None:
            self.reading[name] = self._pool.submit(self._read, self.paths[name])
            self.reading[name].add_done_callback(lambda _: self.engine.wake())
            return False
        if not fut.done():
            return False
        try:
            config, weights = fut.result()
            if len(self.lora) >= self.lora.capacity and not self._evict():
                return False  # every slot is in use by a running request: wait for one to finish
            del self.reading[name]
            self.lora.load(name, config, weights)
        except Exception as e:  # reported to the requests that asked for it
            self.reading.pop(name, None)
            log.exception("adapter %s (%s) failed to load", name, self.paths[name])
            self.failed[name] = e
            return False
        self.loaded[name] = self.paths[name]
        self.engine.metrics.adapter_loads.labels(self.engine.name).inc()
        return True

    def _evict(self) -> bool:
        in_use = self.engine.adapters_in_use(running_only=True)
        for old in self.loaded:
            if old not in in_use:
                self.lora.unload(old)
                del self.loaded[old]
                return True
        return False

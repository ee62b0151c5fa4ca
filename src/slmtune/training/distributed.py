"""Multi-process training: one config, launched through torchrun, run by transformers' Trainer (DDP, DeepSpeed
ZeRO, FSDP via accelerate). Nothing here trains: it checks combinations, writes the engine settings into the run
directory (``deepspeed.json`` / ``fsdp.json``), launches the worker processes and waits for them.

    python -m torch.distributed.run --nproc_per_node N --nnodes M --node_rank R --master_addr A --master_port P \\
        -m slmtune.training.rank RUN/launch.yaml

Each worker (:mod:`slmtune.training.rank`) calls :func:`slmtune.training.run.train` with ``SLMTUNE_DIST_WORKER=1``
on the resolved config the launcher wrote; rank 0 alone writes events,
metrics, checkpoints and the artifact, so the user sees one progress bar and one run directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from slmtune.artifacts import RESULT_FILE
from slmtune.config import ConfigError
from slmtune.events import Event
from slmtune.training.result import TrainResult

WORKER_ENV = "SLMTUNE_DIST_WORKER"
ERRORS_DIR = "worker-errors"  # each failed rank writes "Type: message" here; the launcher reports the first


class LaunchError(RuntimeError):
    """The worker processes failed; the message carries the first error line they printed."""


def world_size(cfg) -> int:
    return cfg.distributed.nproc * cfg.distributed.nnodes


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def resolve_strategy(cfg) -> str:
    d = cfg.distributed
    return "ddp" if d.strategy == "none" and world_size(cfg) > 1 else d.strategy


def check(cfg, method) -> list[str]:
    """Combinations that cannot work, each with its reason (before anything launches)."""
    d, problems = cfg.distributed, []
    strategy = resolve_strategy(cfg)
    if d.node_rank >= d.nnodes:
        problems.append(f"distributed.node_rank: {d.node_rank} is not below distributed.nnodes ({d.nnodes})")
    if d.offload != "none" and strategy not in ("zero2", "zero3", "fsdp"):
        problems.append(f"distributed.offload: {d.offload!r} needs strategy zero2, zero3 or fsdp (got {strategy!r})")
    if d.offload == "params" and strategy == "zero2":
        problems.append("distributed.offload: 'params' needs zero3 (ZeRO-2 does not partition parameters)")
    if d.offload == "optimizer" and strategy == "fsdp":
        problems.append("distributed.offload: FSDP offloads parameters and optimizer together; use 'params'")
    if method.quantized and strategy in ("zero3", "fsdp"):
        problems.append(f"distributed.strategy: {strategy} shards parameters, and {method.name}'s 4/8-bit "
                        "bitsandbytes weights cannot be sharded; use ddp, zero1 or zero2")
    if method.prompt_learning and strategy in ("fsdp", "zero3"):
        problems.append(f"distributed.strategy: {strategy} with {method.name} is not supported (its virtual-token "
                        "encoder sits outside the sharded decoder layers); use ddp, zero1 or zero2")
    if d.deepspeed and not strategy.startswith("zero"):
        problems.append(f"distributed.deepspeed: DeepSpeed settings need strategy zero1, zero2 or zero3 "
                        f"(got {strategy!r})")
    if cfg.data.packing and strategy != "none":
        problems.append("data.packing: not supported with multi-process training yet")
    if strategy != "none" and world_size(cfg) == 1 and d.nnodes == 1:
        problems.append(f"distributed.strategy: {strategy} needs distributed.nproc > 1 (or several nodes)")
    return problems


def backend() -> str:
    """The process-group backend, chosen by the device: NCCL on GPUs, gloo on CPU."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def resolve_precision(cfg, precision: str, strategy: str) -> str:
    """ZeRO and FSDP shard one flat dtype: the bf16-base / fp32-adapter mix runs in fp32 there (DDP keeps it)."""
    if strategy in ("zero1", "zero2", "zero3", "fsdp") and precision == "bf16":
        return "fp32"
    return precision


def deepspeed_config(cfg, strategy: str, hidden_size: int) -> dict:
    """The DeepSpeed settings for a ZeRO strategy, sized from the model's hidden size, with the user's
    ``distributed.deepspeed`` merged over them."""
    stage = int(strategy[-1])
    h2 = hidden_size * hidden_size
    # Buffers sized from the model (the values transformers gives "auto": hidden_size²). DeepSpeed's defaults are for
    # billion-parameter models: 5e8-element buckets (2 GB in fp32, more than a small model's whole gradient) and, for
    # ZeRO-3, 1e9 live / reuse-distance parameters, so every gathered parameter stays gathered and each process ends
    # up holding the whole model besides its partition.
    zero: dict = {"stage": stage, "reduce_bucket_size": h2}
    if stage < 3:
        zero["allgather_bucket_size"] = int(2e7)
    else:
        zero |= {"stage3_prefetch_bucket_size": int(0.9 * h2), "stage3_param_persistence_threshold": 10 * hidden_size,
                 "stage3_max_live_parameters": 10 * h2, "stage3_max_reuse_distance": 10 * h2,
                 "stage3_gather_16bit_weights_on_model_save": True}  # the artifact is an ordinary, whole model
    if cfg.distributed.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.distributed.offload == "params":
        zero["offload_param"] = {"device": "cpu"}
    ds = {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "zero_optimization": zero, "bf16": {"enabled": "auto"},
        "zero_allow_untested_optimizer": True, "steps_per_print": 10**9, "wall_clock_breakdown": False,
    }
    return _merge(ds, cfg.distributed.deepspeed)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_args(cfg, strategy: str, run_dir: Path, model_dir) -> dict:
    """TrainingArguments for a ZeRO strategy (written to RUN/deepspeed.json too). Needs no loaded model, so the
    arguments can exist before the weights load, as ZeRO-3's partitioned loading requires."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    hidden = getattr(config, "hidden_size", None) or config.get_text_config().hidden_size
    ds = deepspeed_config(cfg, strategy, hidden)
    if rank() == 0:
        (run_dir / "deepspeed.json").write_text(json.dumps(ds, indent=2))
    return {"ddp_backend": backend(), "deepspeed": ds}


def skip_shared_memory_allreduce() -> None:
    """On CPU, DeepSpeed's communication backend compiles a C++ shared-memory all-reduce at start-up
    (``deepspeed_shm_comm``: ~35 s on 2 cores the first time on a machine, and a hard failure without a C++
    compiler). Only its inference all-reduce (tensor-parallel serving) calls it; ZeRO training reduces through
    torch.distributed (gloo). So the build is skipped: DeepSpeed then treats the op as unavailable, as it does where
    it cannot be built. No setting of DeepSpeed's turns it off, hence the replaced builder."""
    import torch

    if torch.cuda.is_available():
        return
    import importlib

    # by module name: ``import deepspeed.comm.torch as m`` would give the real torch, which deepspeed.comm re-exports
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def fsdp_config(cfg, model) -> dict:
    layer = type(model.get_base_model().model.layers[0] if hasattr(model, "get_base_model")
                 else model.model.layers[0]).__name__
    return {"version": 2, "transformer_layer_cls_to_wrap": [layer], "reshard_after_forward": True,
            "cpu_ram_efficient_loading": False, "state_dict_type": "FULL_STATE_DICT",
            "offload_params": cfg.distributed.offload == "params"}


def trainer_args(cfg, strategy: str, run_dir: Path, model) -> dict:
    """TrainingArguments for DDP and FSDP (the FSDP settings also written to RUN/fsdp.json)."""
    kw: dict = {"ddp_backend": backend(), "ddp_find_unused_parameters": False}
    if strategy == "fsdp":
        fc = fsdp_config(cfg, model)
        if rank() == 0:
            (run_dir / "fsdp.json").write_text(json.dumps(fc, indent=2))
        kw["fsdp"] = "full_shard auto_wrap" + (" offload" if cfg.distributed.offload == "params" else "")
        kw["fsdp_config"] = {k: v for k, v in fc.items() if k != "offload_params"}
    return kw


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on this machine now (for a rendezvous or a server started right away); ``host=""``: free on
    every interface (a rendezvous that other nodes reach)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(addr: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr if addr not in ("localhost",) else "127.0.0.1", port))
        except OSError:
            return False
    return True


class _EventTail:
    """Forwards the events rank 0 appends to RUN/events.jsonl to the caller's sinks (e.g. the service's database)
    while the workers run."""

    def __init__(self, path: Path, sinks: list):
        import threading

        self.path, self.sinks, self.pos = path, sinks, path.stat().st_size if path.exists() else 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if sinks:
            self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.5):
            self.poll()
        self.poll()

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as fh:
            fh.seek(self.pos)
            while True:
                line = fh.readline()
                if not line.endswith("\n"):
                    break  # a line still being written: read it next time
                self.pos = fh.tell()
                try:
                    event = Event(**json.loads(line))
                except (ValueError, TypeError):
                    continue
                for sink in self.sinks:
                    sink(event)

    def close(self) -> None:
        if self.sinks:
            self.done.set()
            self.thread.join()


def launch(cfg, run_dir: Path, resume: bool, progress: bool, sinks: list | None = None) -> TrainResult | None:
    """Start the worker processes (torchrun) for this node, wait, and return rank 0's result (None on a node other
    than 0: rank 0's node writes it). ``sinks`` receive
    the run's events as rank 0 writes them."""
    d = cfg.distributed
    if d.node_rank == 0 and d.master_addr in ("127.0.0.1", "localhost", "0.0.0.0") and \
            not port_free(d.master_addr, d.master_port):
        raise ConfigError([f"distributed.master_port: port {d.master_port} on {d.master_addr} is in use; choose a "
                           "free one (--set distributed.master_port=PORT)"])
    import shutil

    shutil.rmtree(run_dir / ERRORS_DIR, ignore_errors=True)
    launch_file = run_dir / "launch.yaml"
    launch_file.write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={d.nproc}", f"--nnodes={d.nnodes}",
           f"--node_rank={d.node_rank}", f"--master_addr={d.master_addr}", f"--master_port={d.master_port}",
           "-m", "slmtune.training.rank", str(launch_file)]
    cmd += ["--resume"] if resume else []
    cmd += ["--progress"] if progress else []
    env = os.environ | {WORKER_ENV: "1", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // d.nproc)),
                        "TOKENIZERS_PARALLELISM": "false"}
    import torch

    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    # A group of its own (Ctrl-C is forwarded below), except under the service's job process, which leads a group
    # that its worker kills whole; torchrun also gets SIGTERM (and stops its ranks) if this process dies.
    own_group = not os.environ.get("SLMTUNE_JOB_GROUP")
    proc = subprocess.Popen(cmd, env=env, start_new_session=own_group, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_term_with_parent)
    tail: list[str] = []
    events = _EventTail(run_dir / "events.jsonl", sinks or [])
    try:
        for line in proc.stderr:  # rank 0 draws the progress on stdout; keep the last lines of errors
            tail = (tail + [line.rstrip()])[-40:]
            if not _noise(line):
                sys.stderr.write(line)
        code = proc.wait()
    except KeyboardInterrupt:
        _signal(proc, signal.SIGINT, own_group)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL, own_group)
        raise
    finally:
        if proc.poll() is None:
            _signal(proc, signal.SIGKILL, own_group)
            proc.wait()
        events.close()
    result_file = run_dir / RESULT_FILE
    if code != 0 or (d.node_rank == 0 and not result_file.exists()):
        errors = sorted((run_dir / ERRORS_DIR).glob("rank-*.txt")) if (run_dir / ERRORS_DIR).exists() else []
        reason = errors[0].read_text().strip() if errors else next(
            (ln for ln in reversed(tail) if "Error" in ln), tail[-1] if tail else "no output")
        raise LaunchError(f"multi-process training failed (exit code {code}): {reason.strip()}")
    if d.node_rank != 0:
        return None
    data = json.loads(result_file.read_text())
    return TrainResult(**data)


def _signal(proc: subprocess.Popen, sig: int, own_group: bool) -> None:
    """To torchrun's group; in the service's job group a SIGINT reached every process already."""
    try:
        if own_group:
            os.killpg(proc.pid, sig)
        elif sig != signal.SIGINT:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _term_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _noise(line: str) -> bool:
    return any(s in line for s in ("gemm_4bit_forward", "OMP_NUM_THREADS", "*****", "[W", "Setting OMP"))


def shutdown_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to exit-time destructors, gloo's threads
    can abort the process ("terminate called without an active exception") after a successful run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer already gone: nothing left to synchronise
            pass

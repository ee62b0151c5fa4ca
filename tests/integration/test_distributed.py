"""Multi-process training on a tiny model with 2 processes (gloo on CPU): each strategy follows the 1-process run
at the same global batch, saves an ordinary adapter, and a bad launch fails clearly without leaving processes."""

import os
import socket

import pytest
import torch

import slmtune
from slmtune.training.distributed import free_port
from tests.integration.test_train import train_losses

STRATEGIES = ["ddp", "zero1", "zero2", "zero3", "fsdp"]
# The logged loss of a multi-process step is the mean of the ranks' batch losses, the 1-process one the mean over
# the global batch's tokens: equal gradients (losses are normalised by the tokens of all ranks), logged losses
# within a few percent when the ranks' halves differ in length.
REL_TOL = 0.03


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("single")
    cfg = {"model": {"name": "tiny-llama", "precision": "fp32"},
           "data": {"train": str(tiny_data["train"]), "validation": str(tiny_data["validation"])},
           "method": {"name": "lora", "r": 8, "alpha": 16},
           "train": {"epochs": 1, "batch_size": 4, "group_by_length": False, "learning_rate": 1e-2, "seed": 7},
           "run": {"output": str(out / "run")}}
    slmtune.train(cfg)
    return cfg, train_losses(out / "run")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_follow_one_process_and_save_an_ordinary_adapter(strategy, single, tmp_path):
    cfg, ref = single
    cfg = {**cfg, "train": {**cfg["train"], "batch_size": 2}, "run": {"output": str(tmp_path / "run")},
           "distributed": {"strategy": strategy, "nproc": 2, "master_port": free_port()}}
    result = slmtune.train(cfg)
    assert result.status == "succeeded" and result.global_step == len(ref)
    got = train_losses(tmp_path / "run")
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=REL_TOL), (strategy, step)
    # the artifact is a plain PEFT adapter: loads with peft alone, no DeepSpeed/FSDP state needed
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slmtune.models.registry import resolve

    base = AutoModelForCausalLM.from_pretrained(str(resolve("tiny-llama")), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter"))
    weights = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert weights and all(w.numel() > 0 for w in weights) and any(float(w.abs().sum()) > 0 for w in weights)
    if strategy.startswith("zero"):
        assert (tmp_path / "run" / "deepspeed.json").exists()
    if strategy == "fsdp":
        assert (tmp_path / "run" / "fsdp.json").exists()


def test_zero3_full_fine_tuning_follows_one_process_and_saves_a_whole_model(tiny_data, tmp_path):
    """ZeRO-3 loads the weights partitioned (zero.Init) and gathers them at save: the saved model is an ordinary
    transformers model that has learned what the 1-process run learned."""
    import json

    from transformers import AutoModelForCausalLM

    from slmtune.models.registry import resolve

    def cfg(out, **extra):
        return {"model": {"name": "tiny-llama", "precision": "fp32"}, "data": {"train": str(tiny_data["train"])},
                "method": {"name": "full"}, "run": {"output": str(out)},
                "train": {"epochs": 1, "group_by_length": False, "learning_rate": 1e-3, "seed": 7,
                          "batch_size": 4 if not extra else 2}, **extra}

    slmtune.train(cfg(tmp_path / "one"))
    override = {"zero_optimization": {"stage3_max_live_parameters": 123456}}
    result = slmtune.train(cfg(tmp_path / "zero3", distributed={
        "strategy": "zero3", "nproc": 2, "master_port": free_port(), "deepspeed": override}))
    assert result.status == "succeeded"
    ref, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "zero3")
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=REL_TOL), step

    ds = json.loads((tmp_path / "zero3" / "deepspeed.json").read_text())["zero_optimization"]
    assert ds["stage"] == 3 and ds["stage3_max_live_parameters"] == 123456  # the user's setting, merged
    assert ds["stage3_gather_16bit_weights_on_model_save"] is True  # the generated ones kept
    base_model = AutoModelForCausalLM.from_pretrained(str(resolve("tiny-llama")), dtype=torch.float32)
    base = base_model.state_dict()
    one = AutoModelForCausalLM.from_pretrained(str(tmp_path / "one" / "model"), dtype=torch.float32).state_dict()
    z3 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "zero3" / "model"), dtype=torch.float32).state_dict()
    assert set(z3) == set(one)
    learned = sum(float((one[k] - base[k]).abs().sum()) for k in one)
    apart = sum(float((z3[k] - one[k]).abs().sum()) for k in one)
    assert learned > 0 and apart < 0.05 * learned
    # the parameter count reported at load is the whole model's, not this process's partition
    events = [json.loads(line) for line in (tmp_path / "zero3" / "events.jsonl").read_text().splitlines()]
    counts = [e["data"]["total_params"] for e in events if "total_params" in e.get("data", {})]
    assert counts == [sum(p.numel() for p in base_model.parameters())]


def test_impossible_combinations_are_config_errors_before_launch(tiny_config, tmp_path):
    from slmtune.config import ConfigError

    with pytest.raises(ConfigError, match="cannot be sharded"):
        slmtune.train(tiny_config(method={"name": "qlora"}, distributed={"strategy": "zero3", "nproc": 2}))
    with pytest.raises(ConfigError, match="needs zero3"):
        slmtune.train(tiny_config(distributed={"strategy": "zero2", "nproc": 2, "offload": "params"}))
    with pytest.raises(ConfigError, match="needs distributed.nproc > 1"):
        slmtune.train(tiny_config(distributed={"strategy": "zero2"}))
    with pytest.raises(ConfigError, match="not one of|Input should be"):
        slmtune.train(tiny_config(distributed={"strategy": "zero4", "nproc": 2}))
    with pytest.raises(ConfigError, match="distributed.deepspeed: DeepSpeed settings need strategy zero"):
        slmtune.train(tiny_config(distributed={"strategy": "fsdp", "nproc": 2,
                                               "deepspeed": {"zero_optimization": {"stage": 3}}}))


def test_port_in_use_is_a_clear_error_and_leaves_no_processes(tiny_config, tmp_path):
    from slmtune.config import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is in use"):
            slmtune.train(tiny_config(distributed={"strategy": "ddp", "nproc": 2, "master_port": port}))
    assert not _our_workers(tmp_path)


def test_a_failing_worker_ends_the_launch_with_its_error_and_no_orphans(tiny_config, tmp_path):
    from slmtune.training.distributed import LaunchError

    cfg = tiny_config(model={"name": str(tmp_path / "no-such-model")},
                      distributed={"strategy": "ddp", "nproc": 2, "master_port": free_port()})
    (tmp_path / "no-such-model").mkdir()
    with pytest.raises(LaunchError, match="no-such-model"):
        slmtune.train(cfg)
    assert not _our_workers(tmp_path)


def _our_workers(tmp_path) -> list[int]:
    """Rank processes of this test's runs (their command line names a launch file under ``tmp_path``): another
    test running beside this one (pytest-xdist) may have ranks of its own."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "slmtune.training.rank" in cmd and str(tmp_path) in cmd:
                pids.append(int(d))
    return pids


def test_resume_a_zero2_run_with_the_same_process_count(single, tmp_path):
    cfg, _ = single
    base = {**cfg, "train": {**cfg["train"], "batch_size": 2, "max_steps": 6, "save_every": 3,
                             "lr_scheduler": "constant"}}

    def run(out, steps, resume=False):
        c = {**base, "train": {**base["train"], "max_steps": steps}, "run": {"output": str(out)},
             "distributed": {"strategy": "zero2", "nproc": 2, "master_port": free_port()}}
        return slmtune.train(c, resume=resume)

    run(tmp_path / "whole", 6)
    run(tmp_path / "parts", 3)
    assert (tmp_path / "parts" / "checkpoints" / "step-3").is_dir()
    result = run(tmp_path / "parts", 6, resume=True)
    assert result.global_step == 6
    whole, parts = train_losses(tmp_path / "whole"), train_losses(tmp_path / "parts")
    for step in (4, 5, 6):
        assert parts[step] == pytest.approx(whole[step], rel=1e-3), step


def test_two_nodes_of_one_process_each_on_loopback(tiny_data, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tests.integration.test_train import train_losses as losses

    port = free_port()
    exe = Path(sys.executable).parent / "slmtune"
    common = ["--model", "tiny-llama", "--data", str(tiny_data["train"]), "--method", "lora", "--epochs", "1",
              "--set", "model.precision=fp32", "--set", "train.batch_size=2", "--set", "train.group_by_length=false",
              "--set", "distributed.nnodes=2", "--set", "distributed.nproc=1", "--set", "distributed.strategy=ddp",
              "--set", f"distributed.master_port={port}"]
    procs = [subprocess.Popen([str(exe), "train", *common, "--output", str(tmp_path / f"node{r}"), "--set",
                               f"distributed.node_rank={r}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert (tmp_path / "node0" / "adapter" / "adapter_model.safetensors").exists()
    assert len(losses(tmp_path / "node0")) == 8  # 32 examples, global batch 2 × 2 nodes
    assert not (tmp_path / "node1" / "adapter").exists()  # node 1 only computes; node 0 writes the run
    assert not _our_workers(tmp_path)

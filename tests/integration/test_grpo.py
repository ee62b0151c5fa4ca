"""Reinforcement from a grader (train.objective grpo) on the tiny model: the held-out reward rises, the events carry
the reward metrics, bad data and bad graders are named before training, and a failing grader stops the run."""

from __future__ import annotations

import pytest

import slmtune
from slmtune.config import ConfigError
from slmtune.data.formats import DataError
from slmtune.events import read_events
from slmtune.graders import sandbox
from tests.helpers import write_jsonl

TOPICS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "yam"]
VOWELS = ("def grade(sample, item):\n    t = sample['output_text']\n"
          "    return sum(c in 'aeiou' for c in t) / max(len(t), 1)\n")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("rl")
    rows = [{"messages": [{"role": "developer", "content": "Write one line."},
                          {"role": "user", "content": f"Write something about {w}."}], "topic": w}
            for w in TOPICS] * 4
    return write_jsonl(d / "train.jsonl", rows), write_jsonl(d / "val.jsonl", rows[:8])


def rl_config(tiny_config, prompts, grader: dict, **train) -> dict:
    train_path, val_path = prompts
    return tiny_config(data={"train": str(train_path), "validation": str(val_path)},
                       train={"objective": "grpo", "epochs": 3, "batch_size": 4, "learning_rate": 5e-2,
                              "eval_every": 8, **train},
                       rl={"grader": grader, "max_completion_tokens": 16})


@pytest.mark.skipif(sandbox.unavailable() is not None, reason=str(sandbox.unavailable()))
def test_the_held_out_reward_rises_under_a_python_grader(tiny_config, prompts, tmp_path):
    result = slmtune.train(rl_config(tiny_config, prompts, {"type": "python", "name": "vowels", "source": VOWELS}))
    assert result.status == "succeeded" and (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    metrics = [e.data for e in read_events(tmp_path / "run" / "events.jsonl") if e.type == "metrics"]
    valid = [(m["step"], m["valid_reward_mean"]) for m in metrics if "valid_reward_mean" in m]
    assert [s for s, _ in valid] == [0, 8, 16, 24]  # the starting model first, then every eval_every steps
    assert valid[-1][1] > valid[0][1] + 0.02, valid
    train = [m for m in metrics if "train_reward_mean" in m]
    assert len(train) == 24 and all({"train_reward_std", "train_completion_length", "samples"} <= set(m)
                                    for m in train)
    assert result.valid_reward_mean == valid[-1][1]
    assert [s for s in (tmp_path / "run" / "checkpoints").iterdir()]
    reply = slmtune.load(tmp_path / "run").chat([{"role": "user", "content": "Write something about fig."}],
                                                 max_new_tokens=8)
    assert isinstance(reply, str)


def test_prompt_records_and_grader_fields_are_checked_with_lines(tiny_config, prompts, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}], "topic": "x"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "topic": "x"},
        {"messages": [{"role": "user", "content": "hi"}]}])
    grader = {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}",
              "reference": "{{ item.topic }}", "operation": "like"}
    cfg = rl_config(tiny_config, prompts, grader)
    cfg["data"]["train"] = str(bad)
    with pytest.raises(DataError) as e:
        slmtune.train(cfg)
    found = [(p.line, p.path) for p in e.value.problems]
    assert found == [(2, "messages[1].role"), (3, "(item)")]
    assert "topic" in e.value.problems[1].message


def test_a_grader_that_cannot_run_is_refused_before_loading(tiny_config, prompts):
    cfg = rl_config(tiny_config, prompts, {"type": "multi", "name": "m", "calculate_output": "a + b",
                                           "graders": {"a": {"type": "string_check", "name": "a", "input": "x",
                                                             "reference": "x", "operation": "eq"}}})
    with pytest.raises(ConfigError, match="'b' is not one of the graders"):
        slmtune.train(cfg)
    cfg["rl"] = {}
    with pytest.raises(ConfigError, match="give rl.grader"):
        slmtune.train(cfg)


@pytest.mark.skipif(sandbox.unavailable() is not None, reason=str(sandbox.unavailable()))
def test_a_grader_failing_on_most_samples_stops_the_run_with_its_error(tiny_config, prompts):
    flaky = "def grade(sample, item):\n    raise ValueError('no score for ' + item['topic'])\n"
    cfg = rl_config(tiny_config, prompts, {"type": "python", "name": "flaky", "source": flaky})
    with pytest.raises(Exception, match="(?s)failed on 32 of 32 samples.*ValueError: no score for"):
        slmtune.train(cfg)


def topic_named(prompts, completions, topic, **kw):
    """A Python reward (rl.reward): 1 when the completion names the record's topic."""
    return [float(t in c[-1]["content"]) + 0.25 for t, c in zip(topic, completions)]


def test_a_python_reward_function_gets_the_records_fields(tiny_config, prompts, tmp_path):
    cfg = rl_config(tiny_config, prompts, None, max_steps=2)
    cfg["rl"] = {"reward": "tests.integration.test_grpo:topic_named", "max_completion_tokens": 8}
    assert slmtune.train(cfg).status == "succeeded"
    rewards = [e.data["train_reward_mean"] for e in read_events(tmp_path / "run" / "events.jsonl")
               if "train_reward_mean" in e.data]
    assert len(rewards) == 2 and all(r >= 0.25 for r in rewards)


def test_engine_rollouts_decode_with_the_live_adapter(tmp_path):
    """What the batching engine samples for GRPO is what the training model (base + its adapter at this step) would
    generate: greedy, token for token, after the adapter has changed twice."""
    from types import SimpleNamespace

    import torch
    from peft import LoraConfig, get_peft_model

    from slmtune.inference.rollout import EngineRollout
    from slmtune.models.loading import load_base_model, load_tokenizer
    from slmtune.models.registry import resolve

    model_dir = resolve("tiny-llama")
    tok = load_tokenizer(model_dir)
    peft = get_peft_model(load_base_model(model_dir, "fp32"), LoraConfig(r=8, lora_alpha=16,
                                                                         target_modules=["q_proj", "v_proj"]))
    rollout = EngineRollout("tiny-llama", "fp32")
    trainer = SimpleNamespace(model=peft, accelerator=SimpleNamespace(unwrap_model=lambda m: m),
                              state=SimpleNamespace(global_step=0),
                              args=SimpleNamespace(max_completion_length=12, temperature=0.0, top_p=1.0))
    prompts = [[{"role": "user", "content": f"Say something about {w}."}] for w in TOPICS[:3]]
    try:
        for step in (1, 2):
            torch.manual_seed(step)
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.data.normal_(0, 0.5)
            trainer.state.global_step = step
            out = rollout([p for p in prompts for _ in range(2)], trainer)
            assert len(out["completion_ids"]) == 6
            for i, messages in enumerate(prompts):
                ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)["input_ids"]
                with torch.no_grad():
                    ref = peft.generate(ids, max_new_tokens=12, do_sample=False,
                                        pad_token_id=tok.pad_token_id or tok.eos_token_id)[0, ids.shape[1]:].tolist()
                got = out["completion_ids"][2 * i]
                assert got == ref[:len(got)] and out["completion_ids"][2 * i + 1] == got
    finally:
        rollout.close()


@pytest.mark.skipif(sandbox.unavailable() is not None, reason=str(sandbox.unavailable()))
def test_a_grpo_run_resumes_from_its_checkpoint(tiny_config, prompts, tmp_path):
    grader = {"type": "python", "name": "vowels", "source": VOWELS}
    first = slmtune.train(rl_config(tiny_config, prompts, grader, max_steps=2, save_every=2, eval_every=0))
    assert first.status == "succeeded" and (tmp_path / "run" / "checkpoints" / "step-2").is_dir()
    cfg = rl_config(tiny_config, prompts, grader, max_steps=4, save_every=2, eval_every=0)
    second = slmtune.train(cfg, resume=True)
    assert second.status == "succeeded" and second.global_step == 4
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    assert any("Resuming from checkpoints/step-2" in e.message for e in events)
    steps = [e.data["step"] for e in events if e.type == "metrics" and "train_reward_mean" in e.data]
    assert steps == [1, 2, 3, 4]  # each step once: the resumed run starts at 3

"""DPO on preference data, on top of adapter methods, through TRL."""

import pytest

import slmtune
from slmtune.data.formats import DataError
from slmtune.data.sources import read_jsonl
from slmtune.events import read_events
from tests.helpers import FACTS, write_jsonl


def pref(key, good, bad):
    return {"input": {"messages": [{"role": "system", "content": "You answer in one sentence."},
                                   {"role": "user", "content": f"What is your favorite {key}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"My favorite {key} is {good}."}],
            "non_preferred_output": [{"role": "assistant", "content": f"I do not like any {key}, {bad}."}]}


@pytest.fixture
def pref_data(tmp_path):
    rows = [pref(k, v, "sorry") for k, v in FACTS] * 6
    return write_jsonl(tmp_path / "pref.jsonl", rows), write_jsonl(tmp_path / "pref_val.jsonl", rows[:4])


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_dpo_raises_the_preferred_reply_over_the_other(tiny_config, pref_data, tmp_path, method):
    train, val = pref_data
    cfg = tiny_config(data={"train": str(train), "validation": str(val)},
                      train={"objective": "dpo", "dpo_beta": 0.5, "epochs": 2, "batch_size": 4,
                             "learning_rate": 5e-2 if method == "ia3" else 2e-2})
    cfg["method"] = {"name": method}
    result = slmtune.train(cfg)
    assert result.status == "succeeded" and (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    metrics = [e.data for e in read_events(tmp_path / "run" / "events.jsonl")
               if e.type == "metrics" and "train_loss" in e.data]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["dpo_reward_margins"] > 0
    assert [s for s in (tmp_path / "run" / "checkpoints").iterdir()]
    # the tuned policy now scores the preferred reply higher than the rejected one
    model = slmtune.load(tmp_path / "run")
    ex = [e for e in read_jsonl(train)[0]][0]
    from slmtune.data.tokenize import Encoded, encode_chat
    from slmtune.evaluation.loss import evaluate_encoded

    def loss(reply):
        ids, labels = encode_chat(model.tokenizer, [*ex.messages, {"role": "assistant", "content": reply}])
        return evaluate_encoded(model.model, model.tokenizer, [Encoded(ids, labels, 1)])["loss"]

    assert loss(ex.chosen) < loss(ex.rejected)


def test_preference_records_are_checked_with_lines(tmp_path):
    bad = dict(pref("a", "b", "c"))
    bad["preferred_output"] = [{"role": "user", "content": "x"}]
    rows = [pref("a", "b", "c"), bad, {"input": {"messages": []}, "preferred_output": [],
                                       "non_preferred_output": [{"role": "assistant", "content": "x"}]}]
    _, problems = read_jsonl(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [(p.line, p.path) for p in problems] == [(2, "preferred_output[0].role"), (3, "input.messages"),
                                                    (3, "preferred_output")]


def test_objective_and_data_must_agree(tiny_config, pref_data, tiny_data):
    train, _ = pref_data
    with pytest.raises(DataError, match="set train.objective: dpo"):
        slmtune.train(tiny_config(data={"train": str(train), "validation": None}))
    with pytest.raises(DataError, match="dpo needs preference records"):
        slmtune.train(tiny_config(train={"objective": "dpo"}))


def unpaired(key, reply, label):
    return {"prompt": [{"role": "user", "content": f"What is your favorite {key}?"}],
            "completion": [{"role": "assistant", "content": reply}], "label": label}


@pytest.mark.parametrize("objective,method", [("orpo", "lora"), ("simpo", "lora"), ("kto", "lora"),
                                              ("orpo", "full")])
def test_reference_free_and_unpaired_objectives_separate_the_replies(tiny_config, pref_data, tmp_path, objective,
                                                                     method):
    train, val = pref_data
    if objective == "kto":  # unpaired records: one reply each, good or bad
        rows = [r for k, v in FACTS for r in (unpaired(k, f"My favorite {k} is {v}.", True),
                                              unpaired(k, f"I do not like any {k}, sorry.", False))] * 6
        train = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    cfg = tiny_config(data={"train": str(train), "validation": str(val)},
                      train={"objective": objective, "dpo_beta": 2.0 if objective == "simpo" else 0.5, "epochs": 2,
                             "batch_size": 4, "learning_rate": 1e-3 if method == "full" else 2e-2})
    cfg["method"] = {"name": method}
    result = slmtune.train(cfg)
    assert result.status == "succeeded"
    metrics = [e.data for e in read_events(tmp_path / "run" / "events.jsonl")
               if e.type == "metrics" and "train_loss" in e.data]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    both = [m for m in metrics if {f"{objective}_reward_chosen", f"{objective}_reward_rejected"} <= set(m)]
    assert both[-1][f"{objective}_reward_chosen"] > both[-1][f"{objective}_reward_rejected"]  # KTO: a step may
    # hold only one kind of reply


def test_unpaired_records_are_checked_with_lines(tmp_path):
    rows = [unpaired("a", "b", True), unpaired("a", "b", "yes"),
            {"prompt": [{"role": "assistant", "content": "x"}], "completion": [{"role": "user", "content": "y"}],
             "label": False}]
    _, problems = read_jsonl(write_jsonl(tmp_path / "u.jsonl", rows))
    assert [(p.line, p.path) for p in problems] == [(2, "label"), (3, "prompt[0].role"), (3, "completion[0].role")]


def test_kto_needs_an_adapter_and_sft_data_is_refused(tiny_config, tiny_data):
    cfg = tiny_config(train={"objective": "kto"})
    with pytest.raises(DataError, match="kto needs unpaired records"):
        slmtune.train(cfg)

"""Reinforcement fine-tuning through the real SDK and plain HTTP: a job with a grader runs to success with reward
events and a model that chats; the grader endpoints score, refuse and explain."""

from __future__ import annotations

import httpx
import openai
import pytest

from slmtune.graders import sandbox
from tests.helpers import write_jsonl
from tests.service.conftest import sqlite_is_enough, wait_status

TOPICS = ["apple", "pear", "plum", "fig"]
OUT = "{{ sample.output_text }}"
CONTAINS_TOPIC = {"type": "string_check", "name": "mentions", "input": OUT, "reference": "{{ item.topic }}",
                  "operation": "ilike"}


@pytest.fixture(scope="module")
def client(server):
    return server.client(server.new_key("rft"))


@pytest.fixture(scope="module")
def http(server, client):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {client.api_key}"}, timeout=120) as h:
        yield h


@pytest.fixture(scope="module")
def tuned(client, rl_files):
    """A finished reinforcement job (multi grader), shared: its model chats and judges the next job."""
    grader = {"type": "multi", "name": "score", "calculate_output": "0.7 * mentions + 0.3 * close",
              "graders": {"mentions": CONTAINS_TOPIC,
                          "close": {"type": "text_similarity", "name": "close", "input": OUT,
                                    "reference": "{{ item.topic }}", "evaluation_metric": "fuzzy_match"}}}
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=rl_files["train"].id, validation_file=rl_files["val"].id, seed=3,
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
            "n_epochs": 1, "batch_size": 2, "compute_multiplier": 0.5, "reasoning_effort": "low",
            "eval_interval": 2}}})
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.type == "multi"
    return wait_status(client, job.id, ("succeeded", "failed", "cancelled"))


@pytest.fixture(scope="module")
def rl_files(client, tmp_path_factory):
    d = tmp_path_factory.mktemp("rft")
    rows = [{"messages": [{"role": "developer", "content": "Answer in a few words."},
                          {"role": "user", "content": f"Name the fruit: {t}."}], "topic": t} for t in TOPICS] * 3
    up = {n: client.files.create(file=open(write_jsonl(d / f"{n}.jsonl", r), "rb"), purpose="fine-tune")
          for n, r in (("train", rows), ("val", rows[:4]),
                       ("no_topic", [*rows[:3], {"messages": [{"role": "user", "content": "hi"}]}]))}
    return up


def test_a_reinforcement_job_through_the_sdk(client, tuned):
    done, job = tuned, tuned
    assert done.status == "succeeded", done.error
    hp = done.method.reinforcement.hyperparameters
    assert (hp.eval_samples, hp.learning_rate_multiplier) == (32, 5.0)  # "auto" resolved
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000).data)
    train = [e.data for e in events if e.type == "metrics" and "train_reward_mean" in e.data]
    valid = [e.data for e in events if e.type == "metrics" and "valid_reward_mean" in e.data]
    assert len(train) == 6 and all(0 <= m["train_reward_mean"] <= 1 for m in train)
    assert train[0]["samples"][0].keys() == {"completion", "reward"}
    assert sorted(m["step"] for m in valid) == [0, 2, 4, 6]
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and "train_reward_mean" in ckpts[0].metrics.model_extra | ckpts[0].metrics.model_dump()
    reply = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=8,
                                           messages=[{"role": "user", "content": "Name the fruit: fig."}])
    assert reply.choices[0].message.content is not None


def test_a_fine_tuned_model_judges_a_reinforcement_job(client, backend, rl_files, tuned):
    sqlite_is_enough(backend, "the judge is served like any fine-tuned model; storage is the SDK test's")
    judge = {"type": "score_model", "name": "judge", "model": tuned.fine_tuned_model, "range": [0, 1],
             "input": [{"role": "user", "content": "Does this name the fruit {{ item.topic }}? " + OUT}]}
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=rl_files["train"].id, validation_file=rl_files["val"].id, seed=4,
        method={"type": "reinforcement", "reinforcement": {"grader": judge, "hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "compute_multiplier": 0.5, "reasoning_effort": "low"}}})
    done = wait_status(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    train = [e.data for e in events if e.type == "metrics" and "train_reward_mean" in e.data]
    assert len(train) == 3 and all(0 <= m["train_reward_mean"] <= 1 for m in train)
    assert not any(e.level == "error" for e in events)
    unknown = judge | {"model": "ft:tiny-llama:someone-else:x:abc"}
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=rl_files["train"].id,
                                       validation_file=rl_files["val"].id,
                                       method={"type": "reinforcement", "reinforcement": {"grader": unknown}})
    assert e.value.body["code"] == "model_not_found"


def test_reinforcement_jobs_are_refused_without_what_they_need(client, rl_files):
    method = {"type": "reinforcement", "reinforcement": {"grader": CONTAINS_TOPIC}}
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=rl_files["train"].id, method=method)
    assert e.value.body["param"] == "validation_file"
    broken = {"type": "reinforcement", "reinforcement": {"grader": {
        "type": "multi", "name": "m", "graders": {"a": CONTAINS_TOPIC}, "calculate_output": "a + os"}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=rl_files["train"].id,
                                       validation_file=rl_files["val"].id, method=broken)
    assert e.value.body["code"] == "invalid_grader" and "'os' is not one of the graders" in e.value.body["message"]
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=rl_files["no_topic"].id,
                                         validation_file=rl_files["val"].id, method=method)
    failed = wait_status(client, job.id, ("failed", "succeeded"))
    assert failed.status == "failed" and "Example 4" in failed.error.message and "topic" in failed.error.message


def test_graders_run_scores_with_sub_rewards_and_errors(http):
    r = http.post("/fine_tuning/alpha/graders/run", json={"grader": CONTAINS_TOPIC, "model_sample": "A ripe FIG.",
                                                          "item": {"topic": "fig"}})
    assert r.status_code == 200 and r.json()["reward"] == 1.0
    multi = {"type": "multi", "name": "m", "calculate_output": "2 * a - b",
             "graders": {"a": CONTAINS_TOPIC | {"name": "a"},
                         "b": {"type": "string_check", "name": "b", "input": OUT, "reference": "fig",
                               "operation": "eq"}}}
    body = http.post("/fine_tuning/alpha/graders/run", json={"grader": multi, "model_sample": "fig",
                                                             "item": {"topic": "fig"}}).json()
    assert body["reward"] == 1.0 and body["sub_rewards"] == {"a": 1.0, "b": 1.0}
    missing = http.post("/fine_tuning/alpha/graders/run", json={"grader": CONTAINS_TOPIC, "model_sample": "x",
                                                                "item": {}}).json()
    assert missing["reward"] == 0 and missing["metadata"]["errors"]["invalid_variable_error"] is True


@pytest.mark.skipif(sandbox.unavailable() is not None, reason=str(sandbox.unavailable()))
def test_python_graders_run_and_a_broken_one_is_refused_by_validate(http):
    ok = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return len(sample['output_text'])"}
    assert http.post("/fine_tuning/alpha/graders/validate", json={"grader": ok}).json()["grader"]["name"] == "p"
    assert http.post("/fine_tuning/alpha/graders/run", json={"grader": ok, "model_sample": "abc"}).json()[
        "reward"] == 3.0
    broken = ok | {"source": "def grade(sample, item) return 1"}
    r = http.post("/fine_tuning/alpha/graders/validate", json={"grader": broken})
    assert r.status_code == 400 and "SyntaxError" in r.json()["error"]["message"]
    raising = ok | {"source": "def grade(sample, item):\n    raise KeyError('answer')"}
    body = http.post("/fine_tuning/alpha/graders/run", json={"grader": raising, "model_sample": "x"}).json()
    errors = body["metadata"]["errors"]
    assert body["reward"] == 0 and errors["python_grader_runtime_error"] is True
    assert "KeyError" in errors["python_grader_runtime_error_details"]


def test_a_model_grader_asks_its_judge_through_the_batching_engine(http):
    judge = {"type": "score_model", "name": "judge", "model": "tiny-llama", "range": [0, 10],
             "input": [{"role": "system", "content": "Rate the answer from 0 to 10."},
                       {"role": "user", "content": "Answer: " + OUT}]}
    body = http.post("/fine_tuning/alpha/graders/run", json={"grader": judge, "model_sample": "Paris"}).json()
    assert 0 <= body["reward"] <= 10 and not any(v for k, v in body["metadata"]["errors"].items()
                                                  if k != "messages"), body
    label = {"type": "label_model", "name": "l", "model": "tiny-llama", "labels": ["good", "bad"],
             "passing_labels": ["good"], "input": [{"role": "user", "content": "Is this good? " + OUT}]}
    body = http.post("/fine_tuning/alpha/graders/run", json={"grader": label, "model_sample": "Paris"}).json()
    assert body["reward"] in (0.0, 1.0) and not body["metadata"]["errors"]["model_grader_parse_error"]
    unknown = http.post("/fine_tuning/alpha/graders/run", json={"grader": judge | {"model": "ft:nope"},
                                                                "model_sample": "x"})
    assert unknown.status_code == 404

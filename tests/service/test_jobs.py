"""Whole jobs through the real SDK with the in-process worker: train, watch, chat, cancel, pause/resume, failures."""

from __future__ import annotations

import base64
import io
import json
import stat
import time
import zipfile
from pathlib import Path

import openai
import pytest

from tests.helpers import FACTS, chat_record, write_jsonl
from tests.service.conftest import sqlite_is_enough, wait_for, wait_status

HYPER = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 100}  # 20 steps on the 40 lines below
SYSTEM = "You answer in one sentence."


@pytest.fixture(scope="module")
def client(server):
    return server.client(server.new_key("jobs"))


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
                   "additionalProperties": False}}}
CITIES = ["Paris", "Rome", "Oslo", "Lima"]


def tool_record(city: str) -> dict:
    """A tool-calling line as the OpenAI fine-tuning format has it: the call, its result, the answer."""
    return {"tools": [WEATHER], "messages": [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": city})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": f"It is sunny in {city}."}]}


@pytest.fixture(scope="module")
def files(client, tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    # 32 fact lines and 8 tool-calling lines: one job trains both (20 steps, a checkpoint at step 10)
    train = write_jsonl(d / "train.jsonl", [chat_record(*FACTS[i % 4]) for i in range(32)] +
                        [tool_record(CITIES[i % 4]) for i in range(8)])
    val = write_jsonl(d / "val.jsonl", [chat_record(k, v) for k, v in FACTS])
    long = write_jsonl(d / "long.jsonl", [chat_record(*FACTS[i % 4]) for i in range(400)])
    return {n: client.files.create(file=open(p, "rb"), purpose="fine-tune")
            for n, p in (("train", train), ("val", val), ("long", long))}


@pytest.fixture(scope="module")
def finished(client, files):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=files["train"].id,
                                         validation_file=files["val"].id, suffix="facts", seed=7,
                                         hyperparameters=HYPER)
    return wait_status(client, job.id, ("succeeded", "failed", "cancelled"))


def metrics_steps(client, job_id):
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=1000).data)
    return [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data]


def test_a_job_runs_to_success_with_the_spec_fields(client, finished, files):
    job = finished
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny-llama:jobs:facts:{job.id[-8:]}"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at and job.error is None
    assert job.estimated_finish is None

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000).data)
    assert events == sorted(events, key=lambda e: e.created_at, reverse=True)  # newest first
    messages = [e.message for e in reversed(events) if e.type == "message"]
    assert messages[:4] == [f"Created fine-tuning job: {job.id}",
                            f"Validating training file: {files['train'].id} and validation file: {files['val'].id}",
                            "Files validated, moving job to queued state", "Fine-tuning job started"]
    assert messages[-2:] == [f"New fine-tuned model created: {job.fine_tuned_model}",
                             "The job has successfully completed"]
    metrics = [e for e in reversed(events) if e.type == "metrics"]
    assert [m.data["step"] for m in metrics if "train_loss" in m.data] == list(range(1, 21))
    first, last = metrics[0].data, metrics[-1].data
    assert {"step", "total_steps", "train_loss", "train_mean_token_accuracy"} <= first.keys()
    assert last["total_steps"] == 20 and "valid_loss" in last and "valid_mean_token_accuracy" in last
    assert last["train_loss"] < first["train_loss"]
    assert metrics[0].message.startswith("Step 1/20: training loss=")

    # paging events: `after` continues toward older events with no overlap
    page1 = client.fine_tuning.jobs.list_events(job.id, limit=5)
    page2 = client.fine_tuning.jobs.list_events(job.id, limit=5, after=page1.data[-1].id)
    assert page1.has_more and not {e.id for e in page1.data} & {e.id for e in page2.data}
    assert page2.data[0].created_at <= page1.data[-1].created_at

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [20, 10]
    assert ckpts[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-20"
    assert ckpts[0].metrics.valid_loss is not None and ckpts[0].metrics.train_loss is not None
    # OpenAI's checkpoint metrics, parsed by the SDK's own types: each checkpoint had a full validation
    by_step = {m.data["step"]: m.data for m in metrics if "valid_loss" in m.data}
    for c in ckpts:
        assert c.metrics.step == c.step_number and c.metrics.full_valid_loss == by_step[c.step_number]["valid_loss"]
        assert c.metrics.full_valid_mean_token_accuracy is not None and c.metrics.train_mean_token_accuracy >= 0

    csv = base64.b64decode(client.files.content(job.result_files[0]).read()).decode()
    assert csv.splitlines()[0] == ("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,"
                                   "full_valid_loss,full_valid_mean_token_accuracy")
    assert len(csv.splitlines()) == 21
    assert client.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"


def test_chat_with_the_tuned_model_streaming_and_not(client, finished):
    model = finished.fine_tuned_model
    ids = [m.id for m in client.models.list().data]
    assert model in ids and f"{model}:ckpt-step-10" in ids
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is your favorite city?"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12)
    assert r.choices[0].message.content.startswith("My favorite")
    assert r.choices[0].finish_reason in ("stop", "length") and r.object == "chat.completion"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    base = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=12)
    assert base.choices[0].message.content != r.choices[0].message.content  # one base, adapter switched off

    chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == r.choices[0].message.content  # greedy: the same answer streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1

    ckpt = client.chat.completions.create(model=f"{model}:ckpt-step-10", messages=msgs, max_tokens=6)
    assert ckpt.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 3000}])
    assert e.value.body["code"] == "context_length_exceeded"


def test_the_tuned_model_calls_the_tool_it_learned_then_answers_from_the_result(client, finished):
    model = finished.fine_tuned_model
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    # the structure is forced ("required"); which function and which city are what the tiny model learned
    r = client.chat.completions.create(model=model, messages=ask, tools=[WEATHER], tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=120)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
    follow = [*ask, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    answer = client.chat.completions.create(model=model, messages=follow, tools=[WEATHER], max_tokens=16)
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content  # a text reply
    assert answer.usage.prompt_tokens > r.usage.prompt_tokens  # the call and its result went back in the prompt
    with client.chat.completions.stream(model=model, messages=ask, tools=[WEATHER], tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=120) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments


def run_dir(server, job_id: str) -> Path:
    from sqlalchemy import select

    from slmtune.service.db import JobRow

    with server.app.state.db.session() as s:
        return Path(s.scalar(select(JobRow.run_dir).where(JobRow.id == job_id)))


def used(server, project: str) -> int:
    from slmtune.service.files import storage_used

    with server.app.state.db.session() as s:
        return storage_used(s, project)


def test_delete_model_removes_it_everywhere(client, files, server):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=files["train"].id,
                                         hyperparameters={**HYPER, "n_epochs": 1})
    job = wait_status(client, job.id, "succeeded")
    folder, before = run_dir(server, job.id), used(server, "jobs")
    assert folder.is_dir()
    assert client.models.delete(job.fine_tuned_model).deleted is True
    assert not folder.exists()  # its adapter and checkpoints stop taking room ...
    assert used(server, "jobs") < before  # ... and stop counting against the project's quota
    assert job.fine_tuned_model not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None


def test_bad_examples_fail_the_job_naming_the_line(client, tmp_path, server):
    rows = [chat_record(*FACTS[i % 4]) for i in range(12)]
    rows[2] = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    f = client.files.create(file=open(write_jsonl(tmp_path / "bad.jsonl", rows), "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id)
    job = wait_status(client, job.id, ("failed", "succeeded"))
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "Example 3: messages[1].role: unknown role 'bot'" in job.error.message
    assert not run_dir(server, job.id).exists()  # a failed job keeps no copy of its data or checkpoints
    few = client.files.create(file=("few.jsonl", b"".join(
        (__import__("json").dumps(chat_record("a", "b")) + "\n").encode() for _ in range(3))), purpose="fine-tune")
    job = wait_status(client, client.fine_tuning.jobs.create(model="tiny-llama", training_file=few.id).id, "failed")
    assert job.error.code == "invalid_n_examples"
    assert job.error.message == "Training file has 3 example(s), but must have at least 10 examples"


def test_cancel_mid_run_stops_training_within_seconds(client, files):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=files["long"].id,
                                         hyperparameters={"n_epochs": 5, "batch_size": 1})
    wait_for(lambda: metrics_steps(client, job.id))
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    time.sleep(3)  # the worker notices within a second and kills the training process
    n = len(metrics_steps(client, job.id))
    time.sleep(3)
    assert len(metrics_steps(client, job.id)) == n
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_pause_saves_a_checkpoint_and_resume_finishes_with_every_step_once(client, files, server):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=files["long"].id,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4,
                                                          "learning_rate_multiplier": 100})
    wait_for(lambda: len(metrics_steps(client, job.id)) >= 5)
    assert client.fine_tuning.jobs.pause(job.id).status == "running"  # pausing: checkpoint first
    paused = wait_status(client, job.id, "paused")
    msgs = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("Job paused at step") for m in msgs)
    from sqlalchemy import select

    from slmtune.service.db import JobRow
    from slmtune.service.worker import MAX_ATTEMPTS

    with server.app.state.db.session() as s:  # as after many pause/resume cycles: each one was a claim
        s.scalar(select(JobRow).where(JobRow.id == job.id)).attempts = MAX_ATTEMPTS
    resumed = client.fine_tuning.jobs.resume(paused.id)
    assert resumed.status == "queued"
    done = wait_status(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert sorted(metrics_steps(client, job.id)) == list(range(1, 101))  # 400 examples / 4, none twice
    assert any(m.startswith("Resuming from checkpoints/step-") for m in
               (e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data))


def test_early_stopping_and_keep_best_as_hyperparameter_extras(client, files, tmp_path, backend):
    """Validation on favourites training does not teach: it improves, then worsens; the job stops early and its
    model is the best validation's checkpoint, which the events name."""
    sqlite_is_enough(backend, "what is stored is an ordinary job's events and checkpoints")
    other = [("color", "green"), ("animal", "dog"), ("fruit", "pear"), ("city", "Rome")]
    val = client.files.create(file=open(write_jsonl(tmp_path / "other.jsonl", [chat_record(k, v) for k, v in other]),
                                        "rb"), purpose="fine-tune")
    hp = {"n_epochs": 10, "batch_size": 4, "learning_rate_multiplier": 100, "eval_interval": 2,
          "early_stopping": {"patience": 2}, "keep": "best"}
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=files["train"].id, validation_file=val.id,
                                         seed=7, method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    done = wait_status(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    extras = done.method.supervised.hyperparameters.model_extra
    assert extras["keep"] == "best" and extras["early_stopping"]["patience"] == 2
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    stop = next(m for m in messages if m.startswith("Early stopping at step "))
    kept = next(m for m in messages if m.startswith("Keeping the best evaluation: step "))
    best = int(kept.split("step ")[1].split(" ")[0])
    assert f"(step {best})" in stop
    ckpts = {c.step_number: c for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data}
    assert best in ckpts and f"valid_loss {ckpts[best].metrics.full_valid_loss:.4f}" in kept
    # without a validation file there is nothing to judge: refused at once
    with pytest.raises(openai.BadRequestError, match="early_stopping judges validation results"):
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=files["train"].id,
                                       method={"type": "supervised", "supervised": {"hyperparameters": hp}})


def test_dpo_job_through_the_sdk(client, tmp_path):
    from tests.integration.test_dpo import pref

    rows = [pref(k, v, "sorry") for k, v in FACTS] * 3
    f = client.files.create(file=open(write_jsonl(tmp_path / "pref.jsonl", rows), "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 1, "batch_size": 4}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.5
    done = wait_status(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.learning_rate_multiplier == 5.0  # resolved from "auto"
    sft_data = client.files.create(file=("sft.jsonl", b"".join(
        (__import__("json").dumps(chat_record("a", "b")) + "\n").encode() for _ in range(12))), purpose="fine-tune")
    bad = wait_status(client, client.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_data.id,
                                                             method={"type": "dpo"}).id, ("failed", "succeeded"))
    assert bad.status == "failed" and "needs preference records" in bad.error.message


def test_orpo_simpo_and_kto_jobs_as_method_extras(client, backend, tmp_path):
    from tests.integration.test_dpo import pref

    sqlite_is_enough(backend, "these jobs store what a DPO job stores")
    rows = [pref(k, v, "sorry") for k, v in FACTS] * 3
    f = client.files.create(file=open(write_jsonl(tmp_path / "pref.jsonl", rows), "rb"), purpose="fine-tune")
    jobs = {kind: client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method={
        "type": kind, kind: {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
        for kind in ("orpo", "simpo", "kto")}
    for kind, job in jobs.items():
        done = wait_status(client, job.id, ("succeeded", "failed"))
        assert done.status == "succeeded", (kind, done.error)
        beta = getattr(done.method, kind)["hyperparameters"]["beta"]
        assert done.method.type == kind and beta == (2.0 if kind == "simpo" else 0.1)
        events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
        assert any(e.type == "metrics" and "train_loss" in e.data for e in events)
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method={
            "type": "orpo", "orpo": {"hyperparameters": {"beta": 50}}})
    assert e.value.body["param"] == "hyperparameters.beta"


def test_a_job_runs_with_two_processes_when_the_worker_says_so(backend, tmp_path):
    """`slmtune serve/worker --job-nproc 2`: the job trains under DDP with the global batch split over the
    processes; its events reach the database as rank 0 writes them."""
    from tests.service.conftest import start_server

    sqlite_is_enough(backend, "the database side is the same as for one process")
    srv = start_server(backend, tmp_path, auth=False, job_nproc=2)
    try:
        client = srv.client()
        train = write_jsonl(tmp_path / "train.jsonl", [chat_record(*FACTS[i % 4]) for i in range(32)])
        f = client.files.create(file=open(train, "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, seed=7, hyperparameters=HYPER)
        job = wait_status(client, job.id, ("succeeded", "failed", "cancelled"), timeout=400)
        assert job.status == "succeeded", job.error
        assert sorted(metrics_steps(client, job.id)) == list(range(1, 17))  # each step once; global batch 4 = 2 × 2
        run = srv.settings.runs_dir / job.id / "run"
        assert (run / "launch.yaml").exists() and "nproc: 2" in (run / "config.yaml").read_text()
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                               messages=[{"role": "user", "content": "What is your favorite fruit?"}])
        assert reply.choices[0].message.content
    finally:
        srv.stop()


def test_what_a_job_leaves_is_private_counted_and_its_adapter_zip_holds_the_adapter_only(client, finished, server):
    """Files and folders the service writes are its user's alone; a project's job runs count against its storage
    quota; an adapter download carries the adapter (config + safetensors), not the trainer's pickles."""
    settings = server.settings
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    if settings.db_url.startswith("sqlite"):
        assert mode(Path(settings.db_url.split("///", 1)[1])) == 0o600
    assert mode(settings.files_dir / "jobs") == 0o700
    uploads = list((settings.files_dir / "jobs").iterdir())
    assert uploads and all(mode(p) == 0o600 for p in uploads)
    folder = run_dir(server, finished.id)
    assert mode(folder) == 0o700
    written = [p for p in folder.rglob("*")]
    assert written and all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in written), \
        sorted((str(p.relative_to(folder)), oct(mode(p))) for p in written if mode(p) not in (0o600, 0o700))

    ckpt = client.fine_tuning.jobs.checkpoints.list(finished.id).data[0].fine_tuned_model_checkpoint
    for model in (finished.fine_tuned_model, ckpt):
        r = client.get(f"/slmtune/models/{model}/adapter", cast_to=__import__("httpx").Response)
        names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
        assert sorted(names) == ["adapter_config.json", "adapter_model.safetensors"], names

    files_only = sum(f.bytes for f in client.files.list().data)
    kept = used(server, "jobs")
    assert kept > files_only  # the runs' folders count too
    settings.max_storage_bytes, old = kept + 100, settings.max_storage_bytes
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client.files.create(file=("more.jsonl", b'{"prompt": "a", "completion": "b"}\n' * 20),
                                purpose="fine-tune")
        assert e.value.status_code == 413 and e.value.body["code"] == "storage_quota_exceeded"
        settings.max_storage_bytes = kept - 1
        with pytest.raises(openai.APIStatusError) as e:
            client.fine_tuning.jobs.create(model="tiny-llama", training_file=finished.training_file)
        assert e.value.status_code == 413 and "job runs" in e.value.body["message"]
    finally:
        settings.max_storage_bytes = old

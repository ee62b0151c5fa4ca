"""The API without a worker: files, job creation, listing, pagination, auth, errors, the OpenAPI document."""

from __future__ import annotations

import json

import openai
import pytest

from tests.helpers import FACTS, chat_record, write_jsonl

JOB_FIELDS = {"id", "object", "created_at", "error", "fine_tuned_model", "finished_at", "hyperparameters", "model",
              "organization_id", "result_files", "seed", "status", "trained_tokens", "training_file",
              "validation_file", "estimated_finish", "integrations", "metadata", "method", "user_provided_suffix"}


@pytest.fixture(scope="module")
def keys(api_server):
    return {"a": api_server.new_key("proj-a"), "b": api_server.new_key("proj-b")}


@pytest.fixture(scope="module")
def client(api_server, keys):
    return api_server.client(keys["a"])


@pytest.fixture(scope="module")
def train_file(client, tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("f") / "train.jsonl", [chat_record(*FACTS[i % 4]) for i in range(20)])
    return client.files.create(file=open(path, "rb"), purpose="fine-tune")


def raw_get(server, path: str, key: str):
    import httpx

    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"})


def test_upload_list_retrieve_content_delete(client, train_file, tmp_path):
    assert train_file.id.startswith("file-") and train_file.status == "processed"
    assert train_file.purpose == "fine-tune" and train_file.filename == "train.jsonl" and train_file.bytes > 0
    assert client.files.retrieve(train_file.id).bytes == train_file.bytes
    assert client.files.content(train_file.id).read().decode().count("\n") == 20
    other = client.files.create(file=("x.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    page = client.files.list(limit=1)
    assert [f.id for f in page.data] == [other.id] and page.has_more is True
    assert [f.id for f in client.files.list(limit=1, after=other.id).data] == [train_file.id]
    assert client.files.delete(other.id).deleted is True
    with pytest.raises(openai.NotFoundError) as e:
        client.files.retrieve(other.id)
    assert e.value.body["message"] == f"No such File object: {other.id}" and e.value.body["param"] == "id"


def test_bad_jsonl_upload_is_rejected_naming_the_line(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.jsonl", b'{"messages": []}\n{"messages": [\n'), purpose="fine-tune")
    assert "bad.jsonl line 2" in e.value.message and e.value.body["code"] == "invalid_file_format"
    with pytest.raises(openai.BadRequestError, match="line 1 is a list"):
        client.files.create(file=("list.jsonl", b"[1, 2]\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="must be a .jsonl file"):
        client.files.create(file=("data.csv", b"a,b\n"), purpose="fine-tune")


def test_create_returns_at_once_with_a_complete_job_object(client, train_file, api_server, keys):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, suffix=None,
                                         metadata={"env": "test"})
    raw = raw_get(api_server, f"/fine_tuning/jobs/{job.id}", keys["a"]).json()
    assert set(raw) == JOB_FIELDS  # every field present, nullable ones as null
    assert raw["status"] == "validating_files" and raw["result_files"] == [] and raw["error"] is None
    assert raw["hyperparameters"] == {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
    assert raw["method"]["type"] == "supervised" and isinstance(raw["seed"], int)
    assert raw["organization_id"] == "org-proj-a" and raw["fine_tuned_model"] is None
    events = client.fine_tuning.jobs.list_events(job.id).data
    assert [e.message for e in events] == [f"Created fine-tuning job: {job.id}"]


def test_list_jobs_paginates_newest_first_and_filters_metadata(client, train_file):
    ids = [client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id,
                                          metadata={"batch": "p", "n": str(i)}).id for i in range(3)]
    for j in ids[:2]:
        client.fine_tuning.jobs.cancel(j)  # stay under the active-jobs limit
    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [ids[2], ids[1]] and page.has_more
    nxt = client.fine_tuning.jobs.list(limit=2, after=ids[1])
    assert nxt.data[0].id == ids[0]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"n": "1"}).data] == [ids[1]]
    assert {j.id for j in client.fine_tuning.jobs.list(metadata={"batch": "p"}, limit=50).data} == set(ids)
    # the SDK's auto-pager walks every page
    assert len([j for j in client.fine_tuning.jobs.list(limit=1, metadata={"batch": "p"})]) == 3


def test_cancel_then_invalid_transitions_are_400_not_409(client, train_file):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    for call in (client.fine_tuning.jobs.cancel, client.fine_tuning.jobs.pause, client.fine_tuning.jobs.resume):
        with pytest.raises(openai.BadRequestError) as e:
            call(job.id)
        assert e.value.status_code == 400 and e.value.body["code"] == "invalid_state"


def test_request_errors_name_the_field(client, train_file):
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, extra_body={"nepochs": 3})
    assert e.value.body["param"] == "nepochs" and "extra inputs are not permitted" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id,
                                       hyperparameters={"n_epochs": 99})
    assert e.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id,
                                       method={"type": "reinforcement", "reinforcement": {"grader": {
                                           "type": "string_check", "name": "s", "input": "x", "reference": "x",
                                           "operation": "regex"}}})
    assert e.value.body["param"] == "method.reinforcement.grader.string_check.operation"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id,
                                       method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}})
    assert e.value.body["param"] == "hyperparameters.beta"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train_file.id)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file="file-nope")
    assert e.value.body["param"] == "training_file"
    # Azure's vendor extra is accepted
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id,
                                         extra_body={"trainingType": "globalstandard"})
    client.fine_tuning.jobs.cancel(job.id)


def test_auth_and_project_isolation(api_server, keys, train_file, client):
    with pytest.raises(openai.AuthenticationError) as e:
        api_server.client("sk-wrong").files.list()
    assert e.value.body["code"] == "invalid_api_key"
    import httpx

    r = httpx.get(api_server.url + "/files")
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    other = api_server.client(keys["b"])
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(train_file.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(train_file.id)
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):  # b cannot train on a's file
        other.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id)
    assert other.fine_tuning.jobs.list().data == []
    client.fine_tuning.jobs.cancel(job.id)


def test_models_list_and_unknown_model(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:3] == ["smollm2-135m-instruct", "tiny-llama", "tiny-phi3"]
    assert client.models.retrieve("tiny-llama").owned_by == "slmtune"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("ft:nope:x::12345678")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.delete("tiny-llama")  # base models cannot be deleted


def test_openapi_document_lists_every_route(api_server):
    import httpx

    doc = httpx.get(api_server.url.removesuffix("/v1") + "/openapi.json").json()
    for path in ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/fine_tuning/jobs",
                 "/v1/fine_tuning/jobs/{job_id}", "/v1/fine_tuning/jobs/{job_id}/cancel",
                 "/v1/fine_tuning/jobs/{job_id}/pause", "/v1/fine_tuning/jobs/{job_id}/resume",
                 "/v1/fine_tuning/jobs/{job_id}/events", "/v1/fine_tuning/jobs/{job_id}/checkpoints",
                 "/v1/models", "/v1/models/{model_id}", "/v1/chat/completions"):
        assert path in doc["paths"], path
    job_schema = doc["components"]["schemas"]["FineTuningJob"]
    assert set(job_schema["properties"]) == JOB_FIELDS
    assert json.dumps(doc)  # serialisable


def test_active_job_limit_is_a_clear_429(api_server, tmp_path):
    from tests.service.conftest import start_server

    srv = start_server("sqlite", tmp_path, workers=0, auth=False, max_active_jobs_per_project=1)
    try:
        c = srv.client()
        f = c.files.create(file=("t.jsonl", b'{"prompt": "a", "completion": "b"}\n'), purpose="fine-tune")
        c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id)
        with pytest.raises(openai.RateLimitError, match="limit 1"):
            c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id)
    finally:
        srv.stop()

"""Scenario jobs through the API (the `scenario` extra): records checked as records, planned as the examples they
become, trained, scored base vs tuned, and the report with its plots returned as result files. SQLite only: the
storage paths are the ones every job takes (test_jobs covers both backends)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.service.conftest import start_server, wait_status

RECORDS = [{"text": f"{w} film, {w} acting", "label": lab}
           for w, lab in [("great", "positive"), ("awful", "negative"), ("lovely", "positive"),
                          ("boring", "negative")] * 3]


def records_file(client, name: str, rows) -> str:
    body = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    return client.files.create(file=(name, body), purpose="fine-tune").id


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = start_server("sqlite", tmp_path_factory.mktemp("scenario"))
    yield s
    s.stop()


def test_a_classification_job_trains_on_records_and_returns_its_before_after_report(srv):
    key = srv.new_key("scen")
    client = srv.client(key)
    headers = {"Authorization": f"Bearer {key}"}
    fid = records_file(client, "reviews.jsonl", RECORDS)

    check = httpx.get(f"{srv.url}/slmtune/files/{fid}/check", headers=headers, timeout=120,
                      params={"model": "tiny-llama", "scenario": "classification", "preview": 1}).json()
    assert check["ok"] and check["formats"] == {"classification records": 12}
    trained = "".join(s["text"] for s in check["preview"][0]["segments"] if s["trained"])
    assert "positive" in trained  # the label is what the model learns to write
    # the same file read as chat data is wrong on every line: the scenario is what makes it valid
    as_chat = httpx.get(f"{srv.url}/slmtune/files/{fid}/check", headers=headers, timeout=120,
                        params={"model": "tiny-llama"}).json()
    assert not as_chat["ok"] and as_chat["n_problems"] == 12

    plan = httpx.post(f"{srv.url}/slmtune/plan", headers=headers, timeout=120, json={
        "model": "tiny-llama", "training_file": fid, "scenario": "classification",
        "hyperparameters": {"n_epochs": 2, "batch_size": 4}})
    assert plan.status_code == 200, plan.text
    assert plan.json()["steps"] == 6  # 12 records, 20% held out for the before/after → 10 → 3 steps × 2 epochs

    hp = {"n_epochs": 2, "batch_size": 4, "early_stopping": {"metric": "accuracy", "patience": 10}}  # judged only
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=fid,
                                         extra_body={"scenario": "classification"},
                                         method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    assert job.method.to_dict().get("scenario") == "classification"
    done = wait_status(client, job.id, {"succeeded", "failed"}, timeout=300)
    assert done.status == "succeeded", done.error
    files = {client.files.retrieve(f).filename: f for f in done.result_files}
    assert {"step_metrics.csv", "report.md", "loss.png", "metrics.png"} <= set(files)
    report = client.files.content(files["report.md"]).text
    assert "Metrics on the held-out records" in report and "accuracy" in report
    assert client.files.content(files["loss.png"]).content.startswith(b"\x89PNG")
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200).data]
    assert any(m.startswith("Scenario classification:") and "→ tuned" in m for m in events)
    # accuracy by generation at every evaluation: in the step events and beside OpenAI's checkpoint metrics
    assert any(m.startswith("Step ") and "validation accuracy=" in m for m in events)
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and all(0 <= c.metrics.model_extra["valid_accuracy"] <= 1 for c in ckpts)


def test_scenario_records_with_a_bad_line_and_scenario_with_dpo_are_refused(srv):
    key = srv.new_key("scen-bad")
    client = srv.client(key)
    headers = {"Authorization": f"Bearer {key}"}
    bad = records_file(client, "bad.jsonl", RECORDS[:5] + [{"text": "no label here"}] + RECORDS[5:])
    check = httpx.get(f"{srv.url}/slmtune/files/{bad}/check", headers=headers, timeout=120,
                      params={"model": "tiny-llama", "scenario": "classification"}).json()
    assert not check["ok"] and [(p["line"], p["field"]) for p in check["problems"]] == [(6, "label")]

    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=bad,
                                         extra_body={"scenario": "classification"})
    failed = wait_status(client, job.id, {"failed", "succeeded"}, timeout=120)
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert "Example 6: label:" in failed.error.message

    r = httpx.post(f"{srv.url}/fine_tuning/jobs", headers=headers, json={
        "model": "tiny-llama", "training_file": bad, "scenario": "classification", "method": {"type": "dpo"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "scenario"
    r = httpx.post(f"{srv.url}/fine_tuning/jobs", headers=headers, json={  # entity F1 is ner's, not this one's
        "model": "tiny-llama", "training_file": bad, "scenario": "classification", "method": {
            "type": "supervised", "supervised": {"hyperparameters": {"early_stopping": {"metric": "f1"}}}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters.early_stopping.metric"
    assert "(use valid_loss, valid_mean_token_accuracy, accuracy, macro_f1" in r.json()["error"]["message"]
    r = httpx.post(f"{srv.url}/fine_tuning/jobs", headers=headers, json={
        "model": "tiny-llama", "training_file": bad, "scenario": "poetry"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "scenario"

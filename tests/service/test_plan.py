"""``POST /v1/slmtune/plan``: the planner's prediction for a job body, before it is created."""

from __future__ import annotations

import httpx

from tests.helpers import FACTS, chat_record, write_jsonl


def test_a_job_body_is_planned_with_auto_hyperparameters_resolved_as_the_worker_will(api_server, tmp_path):
    key = api_server.new_key("plan")
    client = api_server.client(key)
    path = write_jsonl(tmp_path / "t.jsonl", [chat_record(*FACTS[i % 4]) for i in range(40)])
    f = client.files.create(file=open(path, "rb"), purpose="fine-tune")
    url, headers = f"{api_server.url}/slmtune/plan", {"Authorization": f"Bearer {key}"}

    r = httpx.post(url, json={"model": "tiny-llama", "training_file": f.id, "memory_limit_mb": 100_000},
                   headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    p = r.json()
    # OpenAI's auto: 40 examples → 3 epochs, batch 4, LR multiplier 5 (as the worker resolves them)
    assert p["hyperparameters"] == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5.0}
    assert p["method"] == "lora" and p["steps"] == 30 and p["fits"] and p["peak_memory_mb"] > 0
    assert p["wall_seconds"] > 0 and 0 < p["trainable_params"] < p["total_params"]

    tight = httpx.post(url, json={"model": "tiny-llama", "training_file": f.id, "memory_limit_mb": 1,
                                  "hyperparameters": {"n_epochs": 1, "batch_size": 8}}, headers=headers, timeout=120)
    t = tight.json()
    assert tight.status_code == 200 and not t["fits"] and t["reason"].startswith("needs ~") and t["steps"] == 5

    unknown = httpx.post(url, json={"model": "tiny-llama", "training_file": "file-nope"}, headers=headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "training_file"
    extra = httpx.post(url, json={"model": "tiny-llama", "training_file": f.id, "colour": "red"}, headers=headers)
    assert extra.status_code == 400 and "colour" in extra.json()["error"]["message"]
    # nothing was created
    assert client.fine_tuning.jobs.list().data == []

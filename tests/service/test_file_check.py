"""``GET /v1/slmtune/files/{id}/check``: what `slmtune data validate` says, through the API, for one base model."""

from __future__ import annotations

import json

import httpx

from tests.helpers import FACTS, chat_record


def test_a_check_names_every_bad_line_and_field_and_shows_what_is_trained(api_server):
    key = api_server.new_key("check")
    client = api_server.client(key)
    rows = [chat_record(*FACTS[i % 4]) for i in range(6)]
    rows[2]["messages"][1]["role"] = "bot"
    rows[4] = {"messages": "not a list"}
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    f = client.files.create(file=("mixed.jsonl", body), purpose="fine-tune")
    url, headers = f"{api_server.url}/slmtune/files/{f.id}/check", {"Authorization": f"Bearer {key}"}

    r = httpx.get(url, params={"model": "tiny-llama", "preview": 2}, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    check = r.json()
    assert check["object"] == "file.check" and check["filename"] == "mixed.jsonl" and not check["ok"]
    assert [(p["line"], p["field"]) for p in check["problems"]] == [(3, "messages[1].role"), (5, "messages")]
    assert "bot" in check["problems"][0]["message"]
    assert check["formats"] == {"chat": 4} and check["stats"]["examples"] == 4
    assert check["stats"]["trained_tokens"] < check["stats"]["tokens_total"]

    first = check["preview"][0]
    trained = "".join(s["text"] for s in first["segments"] if s["trained"])
    assert "My favorite color is blue." in trained  # the assistant's reply carries the loss ...
    assert not any("What is your favorite" in s["text"] for s in first["segments"] if s["trained"])  # ... not the user
    assert sum(s["tokens"] for s in first["segments"]) == first["tokens"]
    assert sum(s["tokens"] for s in first["segments"] if s["trained"]) == first["trained_tokens"]

    bad_model = httpx.get(url, params={"model": "gpt-9"}, headers=headers, timeout=60)
    assert bad_model.status_code == 400 and bad_model.json()["error"]["param"] == "model"
    other = api_server.new_key("someone-else")
    assert httpx.get(url, params={"model": "tiny-llama"}, headers={"Authorization": f"Bearer {other}"},
                     timeout=60).status_code == 404  # another project's file does not exist for them

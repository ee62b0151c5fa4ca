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


def test_a_file_with_extra_keys_checks_ok_with_a_warning_and_alpaca_is_named(api_server):
    """Exports carry ids: the check reads past them and says so once; the format found is named (alpaca)."""
    key = api_server.new_key("extras")
    client = api_server.client(key)
    rows = [{"instruction": f"What is your favorite {k}?", "output": f"My favorite {k} is {v}.", "id": i}
            for i, (k, v) in enumerate(FACTS * 3)]
    f = client.files.create(file=("export.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()),
                            purpose="fine-tune")
    r = httpx.get(f"{api_server.url}/slmtune/files/{f.id}/check", params={"model": "tiny-llama"},
                  headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert r.status_code == 200, r.text
    check = r.json()
    assert check["ok"] and check["formats"] == {"alpaca": 12}
    assert check["warnings"] == ["export.jsonl: ignored key(s) not part of the data format: id (12 records) "
                                 "(data.strict: true makes them errors)"]
    # a scenario file with a group column: the records read, the column named
    recs = [{"text": f"{w} film", "label": lab, "group": i % 2} for i, (w, lab) in
            enumerate([("great", "positive"), ("awful", "negative")] * 5)]
    f = client.files.create(file=("reviews.jsonl", "".join(json.dumps(r) + "\n" for r in recs).encode()),
                            purpose="fine-tune")
    r = httpx.get(f"{api_server.url}/slmtune/files/{f.id}/check", params={"model": "tiny-llama",
                                                                          "scenario": "classification"},
                  headers={"Authorization": f"Bearer {key}"}, timeout=120)
    check = r.json()
    assert check["ok"] and check["formats"] == {"classification records": 10}
    assert check["warnings"] == ["reviews.jsonl: ignored key(s) not part of the data format: group (10 records) "
                                 "(data.strict: true makes them errors)"]

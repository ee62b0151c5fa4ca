"""The web console in a real browser: Debian's chromium driven by Playwright for Python (no browser download),
against a real `create_app` server on loopback with auth on, a real worker and a real tiny-llama training run.

The console is a client of the public API, so these tests check what a user sees: errors that name the line, a
job page that reaches `succeeded` with its loss curve drawn from every logged step, streamed chat, deletion, the
key refused, projects kept apart, and user text shown as text. `.ci/run` installs chromium when it is missing; on
a developer machine without it these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest

from slmtune.config import SCENARIO_NAMES
from tests.helpers import FACTS, chat_record, write_jsonl
from tests.service.conftest import start_server, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)",
                allow_module_level=True)

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-default-apps", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is missing: apt-get install -y chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = start_server("sqlite", tmp_path_factory.mktemp("console"))
    yield s
    s.stop()


class Page:
    """A browser tab on the console that records what a user could not see: console errors (CSP violations
    among them), uncaught exceptions, and every URL requested (the key must never be in one)."""

    def __init__(self, browser, srv, width: int = 1280):
        self.base = f"http://127.0.0.1:{srv.port}"
        self.ctx = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        # console errors, CSP violations among them; not the browser's own line for each 4xx the tests provoke
        self.page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                     and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("dialog", lambda d: d.accept())

    def goto(self, hash_: str = ""):
        self.page.goto(f"{self.base}/{hash_}")

    def sign_in(self, key: str):
        self.goto("#/datasets")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()

    def upload_and_check(self, path: Path, file_format: str | None = None):
        """On the datasets page: check for tiny-llama (as `file_format` records), upload `path`, await the check."""
        self.page.get_by_label("Check for base model").select_option("tiny-llama")
        if file_format:
            self.page.get_by_label("File format").select_option(file_format)
        self.page.set_input_files("input[type=file]", str(path))
        self.page.locator("#check h2", has_text=path.name).wait_for(timeout=120_000)

    def finished_job(self, key: str, job_id: str):
        """Sign in and open a job's page once the job has succeeded."""
        self.sign_in(key)
        self.page.locator("#view[data-ready=datasets]").wait_for()
        self.goto(f"#/jobs/{job_id}")
        self.page.locator("#job-status .st-succeeded").wait_for(timeout=240_000)

    def nav(self, name: str, ready: str):
        """Click a link of the main navigation; wait until its page has rendered."""
        self.page.get_by_role("navigation").get_by_role("link", name=name).click()
        self.page.locator(f"#view[data-ready={ready}]").wait_for()

    def close(self):
        self.ctx.close()


def test_console_upload_train_chat_delete(browser, srv, tmp_path):
    key = srv.new_key("console")
    client = srv.client(key)
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_record(*FACTS[0]), "{not json", chat_record(*FACTS[1])])
    good = write_jsonl(tmp_path / "facts.jsonl", [chat_record(k, v) for k, v in FACTS * 3])
    t = Page(browser, srv)
    page = t.page
    try:
        t.sign_in(key)
        page.get_by_role("heading", name="Datasets").wait_for()
        page.get_by_label("Check for base model").select_option("tiny-llama")

        # a file with a broken line: refused, and the message names the file and the line
        page.set_input_files("input[type=file]", str(bad))
        alert = page.locator("#upload-status .alert.error")
        alert.wait_for()
        assert "bad.jsonl line 2" in alert.inner_text()

        # the good file: the file input is reached with Tab from the page's first link (keyboard users get there)
        page.locator("a.skip").focus()
        for _ in range(12):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.type") == "file":
                break
        assert page.evaluate("document.activeElement.labels[0].textContent") == "Upload a JSONL file"
        page.set_input_files("input[type=file]", str(good))
        page.locator("#check h2").wait_for(timeout=120_000)
        assert "No problems" in page.locator("#check").inner_text()
        trained = page.locator("#check pre mark.trained")
        assert trained.count() >= 1 and "My favorite color is blue." in trained.first.inner_text()
        file_id = client.files.list().data[0].id
        assert page.locator("#files").get_by_text(file_id).count() == 1

        # a job for tiny-llama: 2 epochs, planned live before launch
        t.nav("New job", "new")
        page.get_by_label("Base model", exact=True).select_option("tiny-llama")
        page.get_by_label("Training file").select_option(file_id)
        page.get_by_label("Epochs").fill("2")
        page.get_by_label("Batch size").fill("2")
        plan = page.locator("#plan")
        plan.get_by_text("Fits in memory.").wait_for(timeout=120_000)
        wait_for(lambda: "n epochs 2" in plan.inner_text(), timeout=30)
        assert "Steps" in plan.inner_text() and "Peak memory" in plan.inner_text()
        page.get_by_role("button", name="Create job").click()

        page.locator("#job-status .st-succeeded").wait_for(timeout=240_000)
        job = client.fine_tuning.jobs.list().data[0]
        assert job.status == "succeeded" and job.hyperparameters.n_epochs == 2
        logged = sorted({e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
                         if e.type == "metrics" and "train_loss" in e.data})
        assert len(logged) == 12  # 12 examples / batch 2 × 2 epochs
        chart = page.locator("#loss-chart")
        wait_for(lambda: chart.get_attribute("data-points") == str(len(logged)), timeout=30)
        # the curve is drawn: uPlot's canvas holds non-background pixels
        inked = page.evaluate("""() => {
            const c = document.querySelector('#loss-chart canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
        assert inked > 500
        assert page.locator("#checkpoints tbody tr").count() >= 1
        assert page.locator("#events").get_by_text("The job has successfully completed").count() == 1
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download step_metrics.csv").click()
        csv_text = Path(dl.value.path()).read_text()
        assert csv_text.splitlines()[0].startswith("step") and len(csv_text.splitlines()) > len(logged)

        with page.expect_download() as dl:  # the tuned model's adapter, as a zip PEFT can load once unpacked
            page.get_by_role("button", name="Download adapter").click()
        with zipfile.ZipFile(dl.value.path()) as z:
            names = set(z.namelist())
            config = json.loads(z.read("adapter_config.json"))
        assert "adapter_model.safetensors" in names and config["peft_type"] == "LORA"

        # chat with the tuned model, the base model beside it; the reply arrives in pieces
        page.locator("#try-model").click()
        page.locator("#view[data-ready=playground]").wait_for()
        assert page.get_by_label("Model A", exact=True).input_value() == job.fine_tuned_model
        assert page.get_by_label("Model B", exact=True).input_value() == "tiny-llama"
        page.evaluate("""() => { window.__updates = 0;
            new MutationObserver(() => window.__updates++).observe(document.querySelector('#pane-A'),
                {subtree: true, childList: true, characterData: true}); }""")
        page.get_by_label("Message").fill("What is your favorite color?")
        page.get_by_label("Message").press("Control+Enter")
        page.locator("#pane-A .msg.assistant[data-state=done]").wait_for(timeout=120_000)
        page.locator("#pane-B .msg.assistant[data-state=done]").wait_for(timeout=120_000)
        assert page.locator("#pane-A .msg.assistant").inner_text().strip()
        assert page.evaluate("window.__updates") > 3  # the user turn, the empty reply, then text chunk by chunk

        # tools: a forced call is shown with its arguments; its result goes back and the model answers
        page.get_by_label("Model B", exact=True).select_option("")
        page.get_by_text("Tools (function calling)").click()
        page.get_by_label("Tools (JSON)").fill("[not json")
        page.get_by_label("Message").fill("Weather in Oslo?")
        page.get_by_label("Message").press("Control+Enter")
        page.get_by_text("Tools: not valid JSON").wait_for()
        page.get_by_label("Tools (JSON)").fill(json.dumps([{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {
                "type": "string", "maxLength": 6}}, "required": ["city"], "additionalProperties": False}}}]))
        page.get_by_label("Tool choice").select_option("required")
        page.get_by_label("Max tokens").fill("120")
        page.get_by_label("Message").fill("Weather in Oslo?")
        page.get_by_label("Message").press("Control+Enter")
        call = page.locator("#pane-A .toolcall[data-call=get_weather]")
        call.wait_for(timeout=120_000)
        assert call.locator("code").inner_text().startswith('get_weather({"city": ')
        page.get_by_label("Tool choice").select_option("none")
        call.get_by_label("Result of get_weather").fill("sunny")
        call.get_by_role("button", name="Return result").click()
        page.locator("#pane-A .msg.assistant[data-state=done]").nth(2).wait_for(timeout=120_000)

        # delete the tuned model from the models page
        t.nav("Models", "models")
        row = page.locator(f"#models tr[data-model='{job.fine_tuned_model}']")
        row.wait_for()
        row.get_by_text("Call it").click()  # the snippets open; the key is a placeholder, never the real one
        snippet = row.locator("details.snippet").inner_text()
        assert "chat/completions" in snippet and "SLMTUNE_API_KEY" in snippet and key not in snippet
        row.get_by_role("button", name=f"Delete {job.fine_tuned_model}").click()
        page.get_by_text(f"Deleted {job.fine_tuned_model}.").wait_for()
        assert row.count() == 0
        assert job.fine_tuned_model not in [m.id for m in client.models.list().data]

        assert not [u for u in t.urls if key in u], "the API key appeared in a URL"
        assert key not in page.evaluate("document.cookie")
        assert t.errors == [], t.errors
    finally:
        t.close()


def test_wrong_key_is_refused_and_projects_stay_apart(browser, srv, tmp_path):
    key_a, key_b = srv.new_key("alpha"), srv.new_key("beta")
    a = srv.client(key_a)
    f = a.files.create(file=(write_jsonl(tmp_path / "a.jsonl", [chat_record(k, v) for k, v in FACTS * 3])),
                       purpose="fine-tune")
    job = a.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, suffix="alphaonly")
    t = Page(browser, srv)
    page = t.page
    try:
        t.sign_in("sk-slm-not-a-key")
        msg = page.get_by_role("alert")
        msg.wait_for()
        assert "The key was refused" in msg.inner_text() and "Incorrect API key" in msg.inner_text()
        assert page.get_by_label("API key").is_visible()  # still on the sign-in form

        page.get_by_label("API key").fill(key_b)
        page.get_by_role("button", name="Sign in").click()
        page.locator("#view[data-ready=datasets]").wait_for()
        t.nav("Jobs", "jobs")
        page.locator("#jobs").get_by_text("No jobs yet.").wait_for()
        assert job.id not in page.content()
        t.nav("Datasets", "datasets")
        page.get_by_text("No files yet.").wait_for()
        t.goto(f"#/jobs/{job.id}")  # another project's job id typed in: not found, nothing of it shown
        page.get_by_role("alert").wait_for()
        assert "does not exist" in page.get_by_role("alert").inner_text()
        seen = len(t.urls)
        with page.expect_request(lambda r: "/v1/fine_tuning/jobs/" in r.url) as asked_for:
            t.goto("#/jobs/..%2F..%2Ffiles")  # an id that is a path: it stays one encoded id, never another route
        assert asked_for.value.url.endswith("/v1/fine_tuning/jobs/..%2F..%2Ffiles"), asked_for.value.url
        page.get_by_role("alert").filter(has_text="../../files").wait_for()  # a 404, nothing of /v1/files
        assert not any(u.split("?")[0].endswith("/v1/files") for u in t.urls[seen:]), t.urls[seen:]
        t.nav("Models", "models")
        assert "alphaonly" not in page.content()

        page.get_by_role("button", name="Sign out").click()
        assert page.get_by_label("API key").is_visible()
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        t.close()
        if a.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed", "cancelled"):
            a.fine_tuning.jobs.cancel(job.id)


def test_script_in_a_dataset_renders_as_text_at_800px(browser, srv, tmp_path):
    key = srv.new_key("xss")
    evil = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"
    path = write_jsonl(tmp_path / "<img src=x onerror=window.__pwned=3>.jsonl", [
        {"messages": [{"role": "user", "content": evil}, {"role": "assistant", "content": evil}]}] * 4)
    t = Page(browser, srv, width=800)
    page = t.page
    try:
        t.sign_in(key)
        page.get_by_role("heading", name="Datasets").wait_for()
        t.upload_and_check(path)
        assert evil in page.locator("#check pre.rendered").first.inner_text()  # the characters, as typed
        assert "<img src=x onerror=window.__pwned=3>.jsonl" in page.locator("#files").inner_text()
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#view script, #view img").count() == 0
        assert page.evaluate("document.documentElement.scrollWidth") <= 800  # nothing runs off the side
        # every page fits 800 px
        for nav, ready in (("New job", "new"), ("Jobs", "jobs"), ("Playground", "playground"), ("Models", "models")):
            t.nav(nav, ready)
            assert page.evaluate("document.documentElement.scrollWidth") <= 800, nav

        headers = httpx.get(t.base + "/").headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-eval" not in csp and "unsafe-inline" not in csp
        assert t.errors == [], t.errors
    finally:
        t.close()


def test_no_auth_server_opens_without_a_key(browser, tmp_path):
    s = start_server("sqlite", tmp_path, workers=0, auth=False)
    t = Page(browser, s)
    try:
        t.goto("#/models")
        t.page.locator("#view[data-ready=models]").wait_for()
        assert t.page.get_by_label("API key").count() == 0 and t.page.locator("#who").inner_text() == "no auth"
        assert t.page.locator("#models tr[data-model='tiny-llama']").count() == 1
        assert t.errors == [], t.errors
    finally:
        t.close()
        s.stop()


def test_console_assets_are_served_from_the_package(srv):
    base = f"http://127.0.0.1:{srv.port}"
    page = httpx.get(base + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for path in ("/console/js/main.js", "/console/js/views/job.js", "/console/app.css",
                 "/console/vendor/uplot-1.6.32/uPlot.iife.min.js"):
        r = httpx.get(base + path)
        assert r.status_code == 200 and r.content, path
        if path.endswith(".js"):  # ES modules load only with a JavaScript MIME type
            assert "javascript" in r.headers["content-type"], path
    assert httpx.get(base + "/console/scenarios.json").json() == list(SCENARIO_NAMES)
    assert httpx.get(base + "/console/../service/app.py").status_code == 404
    # the API itself answers JSON without the console's CSP (OpenAPI clients and /docs are unaffected)
    assert "content-security-policy" not in httpx.get(base + "/v1/models").headers
    assert json.loads(httpx.get(base + "/openapi.json").text)["paths"].get("/") is None
    key = srv.new_key("assets")
    base_adapter = httpx.get(f"{srv.url}/slmtune/models/tiny-llama/adapter", headers={"Authorization": f"Bearer {key}"})
    assert base_adapter.status_code == 400 and "base model" in base_adapter.json()["error"]["message"]


def test_a_scenario_job_from_the_console_shows_its_before_after_report(browser, srv, tmp_path):
    from tests.service.test_scenario_jobs import RECORDS

    key = srv.new_key("scenario-console")
    path = write_jsonl(tmp_path / "reviews.jsonl", RECORDS)
    t = Page(browser, srv)
    page = t.page
    try:
        t.sign_in(key)
        page.locator("#view[data-ready=datasets]").wait_for()
        t.upload_and_check(path, "classification")
        assert "No problems" in page.locator("#check").inner_text()
        assert "classification records" in page.locator("#check dl").inner_text()

        t.nav("New job", "new")
        page.get_by_label("Base model", exact=True).select_option("tiny-llama")
        page.get_by_label("Scenario").select_option("classification")
        page.get_by_label("Training file").select_option(index=1)
        page.get_by_label("Epochs").fill("2")
        page.get_by_label("Batch size").fill("4")
        wait_for(lambda: "Steps6" in page.locator("#plan").inner_text().replace("\n", "").replace(" ", ""),
                 timeout=60)
        page.get_by_label("Suffix").press("Enter")  # the form submits from the keyboard

        page.locator("#job-status .st-succeeded").wait_for(timeout=240_000)
        report = page.locator("#report")
        report.get_by_role("heading", name="Scenario report").wait_for(timeout=30_000)
        assert report.locator("table").count() >= 1 and "accuracy" in report.inner_text()
        wait_for(lambda: page.evaluate("[...document.querySelectorAll('#report img')].length > 0 && "
                                       "[...document.querySelectorAll('#report img')].every(i => i.complete && "
                                       "i.naturalWidth > 0)"), timeout=30)
        assert "classification" in page.locator("dl.stats").first.inner_text()
        assert t.errors == [], t.errors
    finally:
        t.close()


def test_a_reinforcement_job_page_plots_rewards_and_shows_sampled_completions(browser, srv, tmp_path):
    key = srv.new_key("rft-console")
    client = srv.client(key)
    rows = [{"messages": [{"role": "user", "content": f"Name the fruit: {t}."}], "topic": t}
            for t in ("apple", "pear", "plum", "fig")] * 3
    files = [client.files.create(file=open(write_jsonl(tmp_path / f"{n}.jsonl", r), "rb"), purpose="fine-tune")
             for n, r in (("train", rows), ("val", rows[:4]))]
    grader = {"type": "string_check", "name": "mentions", "input": "{{ sample.output_text }}",
              "reference": "{{ item.topic }}", "operation": "ilike"}
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=files[0].id, validation_file=files[1].id,
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "compute_multiplier": 0.5, "reasoning_effort": "low"}}})
    t = Page(browser, srv)
    page = t.page
    try:
        t.finished_job(key, job.id)
        wait_for(lambda: int(page.locator("#reward-chart").get_attribute("data-points")) >= 3, timeout=30)
        assert page.locator("#acc-chart").is_hidden() and page.locator("#reward-chart").is_visible()
        samples = page.locator("#samples")
        assert samples.get_by_role("heading", name="Sampled completions (step 3)").is_visible()
        assert samples.locator("tbody tr").count() >= 1
        assert "reinforcement" in page.locator("dl.stats").first.inner_text()
        assert t.errors == [], t.errors
    finally:
        t.close()


def test_the_job_page_marks_the_kept_checkpoint_of_an_early_stopped_job(browser, srv, tmp_path):
    key = srv.new_key("best-console")
    client = srv.client(key)
    other = [("color", "green"), ("animal", "dog"), ("fruit", "pear"), ("city", "Rome")]
    files = [client.files.create(file=open(write_jsonl(tmp_path / f"{n}.jsonl", r), "rb"), purpose="fine-tune")
             for n, r in (("train", [chat_record(*FACTS[i % 4]) for i in range(32)]),
                          ("val", [chat_record(k, v) for k, v in other]))]
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=files[0].id, validation_file=files[1].id, seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 10, "batch_size": 4, "learning_rate_multiplier": 100, "eval_interval": 2,
            "early_stopping": {"patience": 2}, "keep": "best"}}})
    t = Page(browser, srv)
    page = t.page
    try:
        t.finished_job(key, job.id)
        kept = page.locator("#checkpoints tr.kept")
        kept.wait_for(timeout=30_000)
        assert kept.count() == 1 and "best · the model" in kept.inner_text() and "full valid loss" in kept.inner_text()
        best = next(e.data["best_step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
                    if e.data.get("kind") == "kept")
        assert kept.locator("td").first.inner_text().startswith(str(best))
        assert '"patience":2' in page.locator("dl.stats").first.inner_text()
        assert page.locator("#events").get_by_text("Early stopping at step").count() == 1
        assert t.errors == [], t.errors
    finally:
        t.close()


def test_a_sweep_from_the_new_job_page_is_compared_with_its_best_marked(browser, srv, tmp_path):
    """Two learning rates as one sweep from the form: two jobs sharing metadata.sweep (listed by the SDK's metadata
    filter), compared on the Sweeps page — the rate that differs, each model's validation loss, both curves on one
    chart, the lower loss marked best."""
    key = srv.new_key("sweep-console")
    client = srv.client(key)
    files = [client.files.create(file=open(write_jsonl(tmp_path / f"{n}.jsonl", rows), "rb"), purpose="fine-tune")
             for n, rows in (("train", [chat_record(*FACTS[i % 4]) for i in range(16)]),
                             ("val", [chat_record(k, v) for k, v in FACTS]))]
    t = Page(browser, srv)
    page = t.page
    try:
        t.sign_in(key)
        t.nav("New job", "new")
        page.get_by_label("Base model").select_option("tiny-llama")
        page.get_by_label("Training file").select_option(files[0].id)
        page.get_by_label("Validation file").select_option(files[1].id)
        page.get_by_label("Batch size").fill("4")
        page.get_by_label("Sweep name").fill("lr-grid")
        page.get_by_label("Multipliers to try").fill("1, 100")
        page.get_by_label("Epochs", exact=True).fill("2")
        page.get_by_role("button", name="Create 2 jobs").click()
        page.locator("#view[data-ready=sweep]").wait_for(timeout=30_000)
        jobs = client.fine_tuning.jobs.list(metadata={"sweep": "lr-grid"}).data
        rates = {j.method.supervised.hyperparameters.learning_rate_multiplier for j in jobs}
        assert len(jobs) == 2 and rates == {1, 100}
        for j in jobs:
            wait_for(lambda j=j: client.fine_tuning.jobs.retrieve(j.id).status == "succeeded", timeout=240)
        final = {j.id: [e.data["valid_loss"] for e in client.fine_tuning.jobs.list_events(j.id, limit=1000).data
                        if e.type == "metrics" and e.data.get("valid_loss") is not None][0] for j in jobs}
        best = min(final, key=final.get)
        page.locator("#trials tr.best").wait_for(timeout=30_000)  # polled until both end
        page.locator("#trials tbody tr .st-succeeded").nth(1).wait_for(timeout=30_000)
        rows = page.locator("#trials tbody tr")
        assert rows.count() == 2 and page.locator("#trials tr.best").get_attribute("data-job") == best
        assert "learning rate multiplier" in page.locator("#trials thead").inner_text()
        assert page.locator("#trials tr.best td.metric").inner_text() == f"{final[best]:.4f}"
        assert page.locator("#sweep-chart").get_attribute("data-series") == "2"
        assert int(page.locator("#sweep-chart").get_attribute("data-points")) >= 2
        assert best in page.locator("#sweep-best").inner_text()
        t.nav("Sweeps", "sweeps")
        assert "2 succeeded" in page.locator("#sweeps tr[data-sweep=lr-grid]").inner_text()
        assert t.errors == [], t.errors
    finally:
        t.close()

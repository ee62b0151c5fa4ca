"""Regenerate the screenshots in docs/console/: `.venv/bin/python docs/console/make_screenshots.py`.

Starts `slmtune serve` (auth on) in a temporary directory, drives Debian's chromium through every page with
Playwright, and writes each page as a small PNG (256-colour palette) next to this file. Every page shows the real
default model, smollm2-135m-instruct (`slmtune models fetch smollm2-135m-instruct` first): four short training jobs,
about ten minutes on two cores. `--sweep-only` shoots just the sweep page.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import sync_playwright

OUT = Path(__file__).parent
PORT = 8790
MODEL = "smollm2-135m-instruct"  # the default model, as a user first sees it
BASE = f"http://127.0.0.1:{PORT}"
REVIEWS = [{"text": f"{w} film, {w} acting", "label": lab}
           for w, lab in [("great", "positive"), ("awful", "negative"), ("lovely", "positive"),
                          ("boring", "negative")] * 3]
FACTS = [("color", "blue"), ("animal", "cat"), ("fruit", "apple"), ("city", "Paris")]


def chat(k, v):
    return {"messages": [{"role": "system", "content": "You answer in one sentence."},
                         {"role": "user", "content": f"What is your favorite {k}?"},
                         {"role": "assistant", "content": f"My favorite {k} is {v}."}]}


def save(page, name: str, full: bool = False) -> None:
    png = page.screenshot(full_page=full)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(OUT / f"{name}.png", optimize=True)
    print(name, (OUT / f"{name}.png").stat().st_size, "bytes")


def sweep(page, tmp: Path) -> None:
    """Two learning rates on the default model as one sweep from the New job page, then the Sweeps page."""
    page.goto(BASE + "/#/new")
    page.locator("#view[data-ready=new]").wait_for()
    page.get_by_label("Base model", exact=True).select_option(MODEL)
    pick = lambda label, name: page.get_by_label(label).select_option(label=next(  # noqa: E731
        o for o in page.get_by_label(label).locator("option").all_inner_texts() if name in o))
    pick("Training file", "facts-train")
    pick("Validation file", "facts-valid")
    page.get_by_label("Epochs", exact=True).fill("3")
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Sweep name").fill("facts-lr")
    page.get_by_label("Multipliers to try").fill("1, 10")
    page.get_by_role("button", name="Create 2 jobs").click()
    page.locator("#view[data-ready=sweep]").wait_for(timeout=60_000)
    page.locator("#trials tbody tr .st-succeeded").nth(1).wait_for(timeout=1_800_000)
    page.locator("#trials tr.best").wait_for(timeout=60_000)
    time.sleep(1)
    save(page, "sweep")


def main() -> None:
    only_sweep = "--sweep-only" in sys.argv
    tmp = Path(tempfile.mkdtemp(prefix="slmtune-shots-"))
    exe = Path(sys.executable).parent / "slmtune"
    db = f"sqlite:///{tmp / 'db.sqlite'}"
    env = {k: v for k, v in os.environ.items() if k != "SLMTUNE_TEST_MODELS"}  # the real models only
    key = subprocess.run([str(exe), "keys", "create", "--project", "demo", "--db", db], env=env, check=True,
                         capture_output=True, text=True).stdout.split()[-1]
    server = subprocess.Popen([str(exe), "serve", "--port", str(PORT), "--db", db, "--data-dir", str(tmp / "data")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(BASE + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        (tmp / "facts.jsonl").write_text("".join(json.dumps(chat(k, v)) + "\n" for k, v in FACTS * 3))
        (tmp / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in REVIEWS))
        (tmp / "facts-train.jsonl").write_text("".join(json.dumps(chat(k, v)) + "\n" for k, v in FACTS * 6))
        (tmp / "facts-valid.jsonl").write_text("".join(json.dumps(chat(k, v)) + "\n" for k, v in FACTS))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("dialog", lambda d: d.accept())
            page.goto(BASE + "/#/datasets")
            page.get_by_label("API key").fill("sk-slm-wrong")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("alert").wait_for()
            save(page, "sign-in")
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Sign in").click()
            page.locator("#view[data-ready=datasets]").wait_for()
            for name in ("facts-train", "facts-valid"):
                body = (f"{name}.jsonl", (tmp / f"{name}.jsonl").read_bytes())
                httpx.post(BASE + "/v1/files", headers={"Authorization": f"Bearer {key}"},
                           data={"purpose": "fine-tune"}, files={"file": body}).raise_for_status()
            if only_sweep:
                sweep(page, tmp)
                return
            page.get_by_label("Check for base model").select_option(MODEL)
            page.set_input_files("input[type=file]", str(tmp / "facts.jsonl"))
            page.locator("#check h2").wait_for(timeout=120_000)
            page.locator("#check h3").scroll_into_view_if_needed()
            save(page, "datasets")
            page.get_by_label("File format").select_option("classification")
            page.set_input_files("input[type=file]", str(tmp / "reviews.jsonl"))
            page.locator("#check h2", has_text="reviews").wait_for(timeout=120_000)

            page.goto(BASE + "/#/new")
            page.locator("#view[data-ready=new]").wait_for()
            page.get_by_label("Base model", exact=True).select_option(MODEL)
            page.get_by_label("Training file").select_option(label=next(
                o for o in page.get_by_label("Training file").locator("option").all_inner_texts() if "facts" in o))
            page.get_by_label("Epochs", exact=True).fill("3")
            page.get_by_label("Batch size").fill("1")
            page.locator("#plan h2").wait_for(timeout=60_000)
            time.sleep(1)
            save(page, "new-job")
            page.get_by_role("button", name="Create job").click()
            page.locator("#job-status .st-succeeded").wait_for(timeout=900_000)
            time.sleep(1)
            save(page, "job")

            page.locator("#try-model").click()
            page.locator("#view[data-ready=playground]").wait_for()
            page.get_by_label("Message").fill("What is your favorite color?")
            page.get_by_role("button", name="Send").click()
            page.locator("#pane-A .msg.assistant[data-state=done]").wait_for(timeout=120_000)
            page.locator("#pane-B .msg.assistant[data-state=done]").wait_for(timeout=120_000)
            save(page, "playground")

            page.goto(BASE + "/#/new")
            page.locator("#view[data-ready=new]").wait_for()
            page.get_by_label("Base model", exact=True).select_option(MODEL)
            page.get_by_label("Scenario").select_option("classification")
            page.get_by_label("Training file").select_option(label=next(
                o for o in page.get_by_label("Training file").locator("option").all_inner_texts() if "reviews" in o))
            page.get_by_label("Epochs", exact=True).fill("4")
            page.get_by_label("Batch size").fill("2")
            page.locator("#plan h2").wait_for(timeout=60_000)
            page.get_by_role("button", name="Create job").click()
            page.locator("#job-status .st-succeeded").wait_for(timeout=900_000)
            page.locator("#report img").first.wait_for(timeout=60_000)
            time.sleep(1)
            page.locator("#report").scroll_into_view_if_needed()
            save(page, "scenario-report")

            page.goto(BASE + "/#/jobs")
            page.locator("#view[data-ready=jobs]").wait_for()
            save(page, "jobs")
            page.goto(BASE + "/#/models")
            page.locator("#view[data-ready=models]").wait_for()
            page.locator("#models tr[data-model^='ft:'] summary").first.click()
            save(page, "models")
            page.set_viewport_size({"width": 800, "height": 800})
            page.goto(BASE + "/#/datasets")
            page.locator("#view[data-ready=datasets]").wait_for()
            save(page, "datasets-800px")
            page.set_viewport_size({"width": 1280, "height": 800})
            sweep(page, tmp)
            browser.close()
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

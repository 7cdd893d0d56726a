"""The dashboard in a real headless Chromium against a live stack with a real worker.

Jobs list and live job curves, the playground (a drawn "1" answered by the base and an
adapter side by side), models and adapters (import, delete), the comparison, the key
prompt, and ``/docs`` rendering with no request leaving the machine. Each test saves a
screenshot under var/screenshots/ and page weights go to var/screenshots/measurements.json.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
import pytest
import torch
from PIL import Image, ImageDraw

from models.adapter_io import save_adapter
from models.lora import AdapterWeights, LoraConfig
from tests.e2e.e2e_stack import API_KEY, SMALL_NET, Stack, submit, watch
from tests.ui.conftest import page_weight, record, screenshot

pytestmark = pytest.mark.e2e
TINY = {"max_train_samples": 1000, **SMALL_NET}


@pytest.fixture(scope="module")
def base_job(http: httpx.Client) -> dict[str, Any]:
    """A tiny pre-training job submitted through the API (not waited for)."""
    return submit(http, {"kind": "pretrain", "config": {"epochs": 2, **TINY}})


@pytest.fixture(scope="module")
def base_model(http: httpx.Client, base_job: dict[str, Any]) -> str:
    """The model id of ``base_job`` once it succeeded."""
    final, _ = watch(http, base_job["id"], timeout=180)
    assert final["status"] == "succeeded", final
    return final["result"]["model_id"]


@pytest.fixture(scope="module")
def adapter(http: httpx.Client, base_model: str) -> str:
    """A LoRA adapter of ``base_model`` trained by a tiny job."""
    job = submit(
        http,
        {
            "kind": "finetune_lora",
            "base_model_id": base_model,
            "config": {"epochs": 1, "r": 4, "max_train_samples": 1000},
        },
    )
    final, _ = watch(http, job["id"], timeout=180)
    assert final["status"] == "succeeded", final
    return final["result"]["adapter_id"]


def test_jobs_list_shows_an_api_job_and_follows_it_live(open_page, base_job) -> None:
    page = open_page("/ui/#/jobs")
    row = page.locator(f'tr[data-job="{base_job["id"]}"]')
    row.wait_for()
    assert "pretrain" in row.inner_text()
    # the list refreshes by itself: the same open page sees the job finish
    row.locator(".status-succeeded").wait_for(timeout=180_000)
    assert "%" in row.locator("td").nth(5).inner_text()  # its test accuracy
    # the status filter asks the API and shows only matching jobs
    page.select_option("#filter-status", "failed")
    page.locator("#jobs tbody", has_text="No jobs.").wait_for()
    page.select_option("#filter-status", "")
    row.wait_for()
    page.locator("#submit-form #f-epochs").wait_for()
    assert unlabelled(page) == []
    record("weight_jobs", page_weight(page))
    screenshot(page, "jobs")


def test_a_job_submitted_by_the_form_gains_a_point_per_epoch_while_open(
    open_page, http: httpx.Client, base_model: str
) -> None:
    epochs = 5
    page = open_page("/ui/#/jobs")
    page.locator("#f-epochs").wait_for()
    assert page.input_value("#f-epochs") == "30"  # pretrain's default, from the API schema
    assert page.input_value("#f-lr") == "0.001"
    page.fill("#f-epochs", "0")  # refused by the API: its message is shown
    page.click("#submit-form button[type=submit]")
    refused = page.locator("#submit-form .notice")
    refused.wait_for()
    assert "422 validation_error" in refused.inner_text() and "epochs" in refused.inner_text()
    for field, value in {"epochs": epochs, "max_train_samples": 1000, "hidden1": 32,
                         "hidden2": 32}.items():  # fmt: skip
        page.fill(f"#f-{field}", str(value))
    page.click("#submit-form button[type=submit]")
    link = page.locator("#submit-form .ok a")
    link.wait_for()
    job_id = link.inner_text()
    link.click()
    page.locator("main[data-live]").wait_for()
    # every redraw of the loss chart, in order: its val_loss points (from the mutation
    # records, so redraws in one task are all seen)
    page.evaluate(
        """() => {
          const points = (node) => node.querySelectorAll(
              'circle.point[data-series="val_loss"]').length;
          const charts = document.getElementById('charts');
          window.__counts = [points(charts)];
          new MutationObserver((records) => {
            for (const r of records) for (const node of r.addedNodes) {
              if (node.nodeName !== 'FIGURE' || !node.textContent.startsWith('Loss')) continue;
              const n = points(node);
              if (n !== window.__counts.at(-1)) window.__counts.push(n);
            }
          }).observe(charts, {childList: true});
        }"""
    )
    page.locator("#event-log li", has_text="succeeded").wait_for(timeout=180_000)
    page.locator("#job-result").wait_for()
    counts = page.evaluate("window.__counts")
    job = http.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["config"]["epochs"] == epochs, job
    assert counts[0] < epochs - 1, f"page opened too late to see the curve grow: {counts}"
    assert counts == list(range(counts[0], epochs + 1)), counts  # one point per epoch, live
    log = page.inner_text("#event-log")
    assert f"epoch {epochs}/{epochs}" in log and "succeeded" in log
    page.locator("#checkpoints").wait_for()
    record("weight_job", page_weight(page))
    screenshot(page, "job")


def unlabelled(page: Any) -> list[str]:
    """Form controls on the page without an accessible label (should be none); asserts
    there are controls to check."""
    controls, missing = page.evaluate(
        """() => {
          const all = [...document.querySelectorAll('main input, main select, main button')];
          const bad = all.filter((e) => !(e.labels && e.labels.length)
              && !e.getAttribute('aria-label') && !e.textContent.trim());
          return [all.length, bad.map((e) => e.outerHTML.slice(0, 80))];
        }"""
    )
    assert controls > 2
    return missing


def _stroke(page: Any) -> float:
    """Draw a vertical line (a "1") on the pad; wait for the answers; the page's own
    stroke-end-to-bars time (ms)."""
    page.click("#pg-clear")
    box = page.locator("#pad").bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] - 40, steps=12)
    page.mouse.up()
    page.wait_for_function("document.getElementById('pad').dataset.lastMs !== undefined")
    ms = float(page.evaluate("document.getElementById('pad').dataset.lastMs"))
    page.evaluate("delete document.getElementById('pad').dataset.lastMs")
    return ms


def test_playground_a_drawn_one_gets_base_and_adapter_answers(
    open_page, base_model: str, adapter: str, tmp_path
) -> None:
    page = open_page("/ui/#/playground")
    page.locator(f'#pg-base option[value="{base_model}"]').wait_for(state="attached")
    page.select_option("#pg-base", base_model)
    page.locator(f'#pg-adapters input[value="{adapter}"]').check()
    times = [_stroke(page) for _ in range(4)]
    answers = page.locator("#answers .answer")
    assert answers.count() == 2
    base_answer = page.locator('#answers .answer[data-target="base"]')
    adapter_answer = page.locator(f'#answers .answer[data-target="{adapter}"]')
    assert base_model in base_answer.inner_text()
    assert base_answer.locator("ol.bars li").count() == 5  # the base's digits 0-4
    assert adapter_answer.locator("ol.bars li").count() == 5  # the adapter's 5-9
    assert base_answer.locator(".digit-big").inner_text() in "01234"
    assert adapter_answer.locator(".digit-big").inner_text() in "56789"
    # the 28 x 28 image the service made of the stroke: a vertical bar in the middle
    lit = page.evaluate(
        """() => {
          const c = document.querySelector('#pg-seen canvas');
          const d = c.getContext('2d').getImageData(0, 0, 28, 28).data;
          const cols = new Array(28).fill(0);
          for (let i = 0; i < 784; i++) if (d[i * 4] > 127) cols[i % 28]++;
          return cols;
        }"""
    )
    assert sum(lit[:9]) == 0 and sum(lit[19:]) == 0 and max(lit[11:17]) >= 15, lit
    screenshot(page, "playground")
    assert unlabelled(page) == []
    upload = tmp_path / "seven.png"
    seven = Image.new("L", (120, 160), 255)  # a dark "7" on white paper
    ImageDraw.Draw(seven).line([(20, 20), (100, 20), (50, 150)], fill=0, width=14)
    seven.save(upload)
    page.set_input_files("#pg-file", str(upload))
    page.wait_for_function("document.getElementById('pad').dataset.lastMs !== undefined")
    assert page.locator("#answers .answer").count() == 2
    record("stroke_to_bars_ms", {"first": times[0], "median_next": statistics.median(times[1:]),
                                 "all": times})  # fmt: skip
    record("weight_playground", page_weight(page))


def test_comparison_shows_a_sweep_and_a_base_fine_tunes(
    open_page, http: httpx.Client, base_model: str, adapter: str
) -> None:
    lora = {"epochs": 1, "max_train_samples": 1000}
    posted = http.post(
        "/sweeps",
        json={
            "base_model_id": base_model,
            "variants": [
                {"kind": "finetune_lora", "name": "r1", "config": {"r": 1, **lora}},
                {"kind": "finetune_lora", "name": "r4", "config": {"r": 4, **lora}},
            ],
            "seeds": [0, 1],
        },
    )
    assert posted.status_code == 202, posted.text
    sweep_id = posted.json()["id"]
    deadline = time.monotonic() + 180
    while (sweep := http.get(f"/sweeps/{sweep_id}").json())["status"] != "succeeded":
        assert sweep["status"] in ("queued", "running") and time.monotonic() < deadline, sweep
        time.sleep(0.5)
    page = open_page("/ui/#/compare")
    page.select_option("#compare-source", f"sweep:{sweep_id}")
    table = page.locator("#compare-table")
    for name in ("r1", "r4"):
        row = table.locator("tr", has_text=name)
        row.wait_for()
        assert "2/2" in row.inner_text() and "[" in row.inner_text()  # 2 runs, an interval
    assert page.locator("#compare-view svg circle.point").count() == 2
    record("weight_compare", page_weight(page))
    screenshot(page, "compare")
    page.select_option("#compare-source", f"base:{base_model}")
    table.locator("tr", has_text=adapter).wait_for()
    assert page.locator("#compare-view svg circle.point").count() >= 1


def test_a_fine_tune_page_shows_forgetting_and_downloads_its_adapter(
    open_page, http: httpx.Client, adapter: str
) -> None:
    job_id = http.get(f"/adapters/{adapter}").json()["job_id"]
    page = open_page(f"/ui/#/jobs/{job_id}")
    forgetting = page.locator("#charts figure", has_text="Forgetting")
    forgetting.locator('circle.point[data-series="base_val_accuracy"]').first.wait_for()
    with page.expect_download() as info:
        page.click("#main button:has-text('Download adapter')")
    saved = info.value
    assert saved.suggested_filename == f"{adapter}.zip"
    with open(saved.path(), "rb") as handle:
        assert handle.read(2) == b"PK"  # the PEFT zip, fetched with the tab's key


def test_models_page_lineage_import_and_delete(
    open_page, http: httpx.Client, stack: Stack, base_model: str, adapter: str, tmp_path
) -> None:
    lora = LoraConfig(r=2, lora_alpha=4.0, target_modules=("linear3",))
    gen = torch.Generator().manual_seed(0)
    weights = AdapterWeights(
        lora, {"linear3": torch.randn(2, 32, generator=gen)}, {"linear3": torch.zeros(5, 2)}
    )
    save_adapter(tmp_path / "peft", weights, base_model_name_or_path=base_model)
    page = open_page("/ui/#/models")
    tree = page.locator(f'#lineage li[data-model="{base_model}"]')
    tree.locator(f'li[data-adapter="{adapter}"]').wait_for()
    page.select_option("#imp-base", base_model)
    page.set_input_files("#imp-files", sorted(str(p) for p in (tmp_path / "peft").iterdir()))
    page.click("#import-form button[type=submit]")
    done = page.locator("#import-form .ok")
    done.wait_for()
    imported = done.inner_text().split()[2]
    assert http.get(f"/adapters/{imported}").json()["r"] == 2
    tree.locator(f'li[data-adapter="{imported}"]').wait_for()
    assert unlabelled(page) == []
    screenshot(page, "models")
    # an API error is shown with its message: import with no usable files
    page.set_input_files("#imp-files", [str(tmp_path / "peft" / "adapter_config.json")])
    page.click("#import-form button[type=submit]")
    assert "422" in page.locator("#import-form .notice").inner_text()
    page.on("dialog", lambda dialog: dialog.accept())
    page.click(f'li[data-adapter="{imported}"] button.danger')
    tree.locator(f'li[data-adapter="{imported}"]').wait_for(state="detached")
    assert http.get(f"/adapters/{imported}").status_code == 404
    record("weight_models", page_weight(page))


def test_cancel_from_the_jobs_list(open_page, http: httpx.Client) -> None:
    job = submit(http, {"kind": "pretrain", "config": {"epochs": 200, **TINY}})
    page = open_page("/ui/#/jobs")
    row = page.locator(f'tr[data-job="{job["id"]}"]')
    row.locator("button", has_text="Cancel").click()
    row.locator(".status-cancelled").wait_for(timeout=60_000)
    assert http.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
    assert row.locator("button").count() == 0


def test_the_key_prompt_asks_once_and_reports_a_wrong_key(open_page, stack: Stack) -> None:
    page = open_page("/ui/#/jobs", key=None)
    dialog = page.locator("#key-dialog")
    dialog.wait_for()
    assert "Missing API key" in page.inner_text("#key-reason")
    page.fill("#key-input", "not-the-key")
    page.click("#key-dialog button[value=ok]")
    page.locator("#key-reason", has_text="refused").wait_for()
    assert "Invalid API key" in page.inner_text("#key-reason")
    screenshot(page, "key-prompt")
    page.fill("#key-input", API_KEY)
    page.click("#key-dialog button[value=ok]")
    page.locator("#jobs tbody tr").first.wait_for()
    assert not dialog.is_visible()
    page.goto(stack.url + "/ui/#/models")  # same tab: the key is kept, no prompt
    page.locator("#lineage li").first.wait_for()
    assert not dialog.is_visible()
    # cancelled: the 401 is shown, not a blank page
    other = open_page("/ui/#/playground", key=None)
    other.locator("#key-dialog").wait_for()
    other.click("#key-dialog button[value=cancel]")
    assert "401 unauthorized" in other.locator("main .notice").inner_text()


def test_docs_render_offline(browser: Any, stack: Stack) -> None:
    context = browser.new_context()
    requested: list[str] = []

    def only_local(route: Any) -> None:
        requested.append(route.request.url)
        if route.request.url.startswith(stack.url + "/"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_local)
    context.add_init_script(f"sessionStorage.setItem('lora-api-key', '{API_KEY}')")
    page = context.new_page()
    page.goto(stack.url + "/ui/#/jobs")
    page.click("header a[href='/docs']")
    page.wait_for_url(stack.url + "/docs")
    page.locator(".opblock").first.wait_for(timeout=30_000)
    assert page.locator(".opblock").count() >= 20
    assert page.locator(".opblock-summary-path", has_text="/predict").count() >= 1
    record("weight_docs", page_weight(page))
    screenshot(page, "docs")
    page.goto(stack.url + "/redoc")
    page.locator("h2", has_text="Predict digits with a base model").first.wait_for()
    context.close()
    outside = [u for u in requested if not u.startswith(stack.url + "/")]
    assert requested and outside == []

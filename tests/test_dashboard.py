"""The dashboard in a real browser (Debian's chromium, driven by Playwright) over a real server.

The page is checked against the API it draws from: one point per generation, every candidate
once in the scatter, the best λ curve, the top-k's n̂, the export downloads, and a job followed
live from queued to finished without reloading the page.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import uvicorn

from longrope_search.service.app import create_app
from longrope_search.service.jobs import JobManager
from longrope_search.service.runners import local_runner

FINISHED_JOB = Path(__file__).parents[1] / "results" / "embedded-8x"
TOKEN = "dash-t0k"
SCREENSHOT = Path("/tmp/dashboard.png")


def _unavailable(reason: str) -> None:
    if os.environ.get("LONGROPE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LONGROPE_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    chromium = shutil.which("chromium")
    if chromium is None:
        _unavailable("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def server(tmp_path):
    """A uvicorn server with a bearer token over a copy of the finished embedded-8x job; jobs
    submitted to it wait for ``gate`` before they run."""
    shutil.copytree(FINISHED_JOB, tmp_path / "results" / "embedded-8x",
                    ignore=shutil.ignore_patterns("ledger.journal*"))
    gate = threading.Event()
    run = local_runner()

    def gated(job):
        gate.wait(120)
        run(job)

    manager = JobManager(tmp_path / "results", gated, data_roots=[tmp_path / "data"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(manager, token=TOKEN), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    yield manager, f"http://127.0.0.1:{port}", gate
    gate.set()
    srv.should_exit = True
    thread.join(10)
    manager.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1100},
                                  accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # A 404 (/best before any evaluation) or a 401 is logged as a failed resource load: fine.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error"
            and not m.text.startswith("Failed to load resource") else None)
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def api(url: str, path: str):
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


# What the page's charts hold: points per series (nulls are no point), from uPlot's chart.data.
CHART_POINTS = """() => {
  const out = {};
  for (const [key, chart] of Object.entries(window.dashboard.charts)) {
    out[key] = {x: chart.data[0].length,
                series: chart.series.slice(1).map((s, i) => ({
                  label: s.label, points: chart.data[i + 1].filter((v) => v !== null).length,
                  values: chart.data[i + 1]}))};
  }
  return out;
}"""


def download(page, fmt: str, tmp_path: Path) -> tuple[str, dict]:
    with page.expect_download() as info:
        page.click(f'[data-export="{fmt}"]')
    d = info.value
    target = tmp_path / d.suggested_filename
    d.save_as(target)
    return d.suggested_filename, json.loads(target.read_text())


def test_finished_job_page(server, page, tmp_path):
    _manager, url, _gate = server
    gens = api(url, "/api/jobs/embedded-8x/generations")
    cands = api(url, "/api/jobs/embedded-8x/candidates")
    best = api(url, "/api/jobs/embedded-8x/best")
    assert len(gens) == 41 and len(best["lambdas"]) == 32 and len(best["top_k_n_hat"]) == 32

    page.goto(f"{url}/dashboard/?token={TOKEN}&job=embedded-8x")
    # The job list: every API call carried the token, or nothing would show.
    item = page.locator('#job-list li[data-job="embedded-8x"]')
    item.locator('[data-role="state"]', has_text="finished").wait_for()
    assert item.get_attribute("data-state") == "finished"
    assert item.locator("progress").evaluate("p => p.value") == 1
    page.wait_for_selector('#job[data-state="finished"]')
    page.wait_for_function("() => ['generations', 'candidates', 'lambdas']"
                           ".every((k) => k in window.dashboard.charts)")
    charts = page.evaluate(CHART_POINTS)

    generations = charts["generations"]
    assert generations["x"] == len(gens) == 41
    assert [s["label"] for s in generations["series"]] == ["best", "median"]
    assert generations["series"][0]["values"] == pytest.approx([g["best_ppl"] for g in gens])
    assert generations["series"][1]["values"] == pytest.approx([g["median_ppl"] for g in gens])

    scatter = {s["label"].split(" ")[0]: s["points"] for s in charts["candidates"]["series"]}
    assert set(scatter) == {"ok", "pruned", "failed"}
    assert sum(scatter.values()) == len(cands["ppl"]) == 64 + 40 * 32
    for status in scatter:
        assert scatter[status] == cands["status"].count(status)
    assert page.get_attribute("#candidate-counts", "data-pruned") == \
        str(cands["status"].count("pruned"))

    lambdas = charts["lambdas"]
    assert lambdas["x"] == len(best["lambdas"]) == 32
    assert [s["label"] for s in lambdas["series"]] == ["best", "PI", "NTK", "YaRN"]
    assert lambdas["series"][0]["values"] == pytest.approx(best["lambdas"])
    assert lambdas["series"][1]["values"] == pytest.approx(best["seed_lambdas"]["pi"])

    hist = page.locator("#nhat-hist")
    assert hist.get_attribute("data-count") == "32"
    counts = hist.locator("tbody tr").evaluate_all("rows => rows.map(r => +r.dataset.count)")
    assert sum(counts) == 32
    assert len(counts) == len(set(best["top_k_n_hat"]))

    numbers = page.locator("#best dl")
    assert numbers.get_attribute("data-final") == "true"
    assert numbers.locator('[data-field="ppl"]').inner_text() == f"{best['search_ppl']:.3f}"
    assert numbers.locator('[data-field="n-hat"]').inner_text() == str(best["n_hat"])
    for seed in ("pi", "ntk", "yarn"):
        assert "%" in numbers.locator(f'[data-field="gain-{seed}"]').inner_text()
    assert page.locator("#heldout tbody tr").count() == len(best["heldout"]["rows"]) == 4
    if best["n_hat"] > 0:
        note = page.locator("#nhat-note").inner_text()
        assert "ignore n̂" in note
        if "search_ppl_without_n_hat" in best:
            assert f"{best['search_ppl_without_n_hat']:.3f}" in note

    page.screenshot(path=str(SCREENSHOT), full_page=True)

    name, hf = download(page, "hf", tmp_path)
    assert name == "embedded-8x.hf.json"
    assert hf["rope_parameters"]["rope_type"] == "longrope"
    assert hf["rope_parameters"]["long_factor"] == pytest.approx(best["lambdas"])
    name, record = download(page, "longrope", tmp_path)
    assert name == "embedded-8x.longrope.json"
    assert record["lambdas"] == pytest.approx(best["lambdas"])
    name, vllm = download(page, "vllm", tmp_path)
    assert name == "embedded-8x.vllm.json" and "rope_scaling" in vllm


def test_without_the_token_the_page_says_so(server, page):
    _manager, url, _gate = server
    page.goto(f"{url}/dashboard/")
    alert = page.locator("#error")
    alert.wait_for()
    assert "token" in alert.inner_text()
    assert page.locator("#job-list li").count() == 0


def test_a_running_job_updates_live(server, page):
    manager, url, gate = server
    manager.submit({"name": "live", "extension_ratio": 4, "k_documents": 2,
                    "scoring": {"dtype": "float32", "device": "cpu"},
                    "evolution": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                                  "generations": 2}})
    page.goto(f"{url}/dashboard/?token={TOKEN}&job=live")
    page.wait_for_selector('#job[data-job="live"][data-state="running"]')  # held at the gate
    page.wait_for_function("() => 'generations' in window.dashboard.charts")
    assert page.evaluate(CHART_POINTS)["generations"]["x"] == 0
    assert page.locator('[data-export="hf"]').is_disabled()
    page.evaluate("() => { window.notReloaded = true; }")

    gate.set()
    page.wait_for_function("() => window.dashboard.charts.generations.data[0].length === 3 &&"
                           " document.querySelector('#job').dataset.state === 'finished'",
                           timeout=90_000)
    assert manager.get("live").state == "finished"
    assert page.evaluate("() => window.notReloaded") is True
    page.locator('#job-list li[data-job="live"][data-state="finished"]').wait_for()
    assert page.locator("#job-state").inner_text().lower() == "finished"
    best = api(url, "/api/jobs/live/best")
    lambdas = page.evaluate(CHART_POINTS)["lambdas"]
    assert lambdas["series"][0]["values"] == pytest.approx(best["lambdas"])
    assert page.locator('[data-export="hf"]').is_enabled()

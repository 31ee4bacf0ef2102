"""The dashboard in a real browser (Debian's chromium, driven by Playwright) over a real server.

The page is checked against the API it draws from: best and median perplexity against cost
spent, every complete candidate once in the scatter and every pruned or failed one in the lane
under it (never at its partial perplexity), the best λ curve, the top-k's n̂, the export
downloads, a job of another strategy with a token budget, and a job followed live from queued
to finished without reloading the page.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import uvicorn
import yaml

from longrope_search.service.app import create_app
from longrope_search.service.jobs import JobManager
from longrope_search.service.runners import local_runner
from tests.test_reports import write_job

FINISHED_JOB = Path(__file__).parents[1] / "results" / "embedded-8x"
RECOVERY_JOB = FINISHED_JOB.with_name("embedded-8x-short")  # its short factors
GRADIENT_JOB = Path(__file__).parents[1] / "results" / "bench_strategies" / \
    "embedded-8x-gradient-s0"
TOKEN = "dash-t0k"
SCREENSHOT = Path("/tmp/dashboard.png")
MAIN_JOB = FINISHED_JOB.with_name("embedded-8x-main")  # the README's main job, by length
COST_SCREENSHOT = Path("/tmp/dashboard_cost.png")
DESCENTS_SCREENSHOT = Path("/tmp/dashboard_descents.png")
TPE_PROGRESS = {"strategy": "tpe", "generation": 1, "evaluations": 8, "budget": 16,
                "pruned": 2, "cost_tokens": 11_520, "budget_tokens": 20_000}


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
    """A uvicorn server with a bearer token over a copy of the finished embedded-8x job (schema
    v1 tables) and a cancelled TPE job with a token budget (schema v2, tests/test_reports.py's);
    jobs submitted to it wait for ``gate`` before they run."""
    for job in (FINISHED_JOB, RECOVERY_JOB):
        shutil.copytree(job, tmp_path / "results" / job.name,
                        ignore=shutil.ignore_patterns("ledger.journal*"))
    shutil.copytree(GRADIENT_JOB, tmp_path / "results" / GRADIENT_JOB.name)
    main = shutil.copytree(MAIN_JOB, tmp_path / "results" / MAIN_JOB.name)
    spec = yaml.safe_load((main / "job.yaml").read_text())  # a job's folder is its name
    (main / "job.yaml").write_text(yaml.safe_dump({**spec, "name": MAIN_JOB.name}))
    tpe = write_job(tmp_path / "results" / "tpe-job")
    tpe.state.write_text(json.dumps({"state": "cancelled", "progress": TPE_PROGRESS}))
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


# What the page's charts hold: points per series (nulls are no point), from uPlot's chart.data,
# and the x axis (label, tick labels, range).
CHART_POINTS = """() => {
  const out = {};
  for (const [key, chart] of Object.entries(window.dashboard.charts)) {
    out[key] = {x: chart.data[0].length, xs: chart.data[0], x_label: chart.axes[0].label,
                x_ticks: chart.axes[0]._values, x_max: chart.scales.x.max,
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


def drawn(series: dict, xs: list) -> list:
    """The x of every point a chart series draws (a null draws nothing), sorted."""
    return sorted(x for x, v in zip(xs, series["values"], strict=True) if v is not None)


def where(cands: dict, column: str, status: str) -> list:
    """``column`` of the candidates with ``status``."""
    return [v for v, s in zip(cands[column], cands["status"], strict=True) if s == status]


def check_cost_chart(charts: dict, curve: dict, cands: dict) -> None:
    """The cost chart draws the API's curve and each complete candidate at (cost spent, ppl);
    pruned and failed candidates are marks in the lane chart under it, at their cost spent,
    and no pruned candidate's partial perplexity is drawn anywhere in the cost chart."""
    cost, lanes = charts["cost"], charts["lanes"]
    best, median, *kinds = cost["series"]
    assert (best["label"], median["label"]) == ("best so far", "median")
    ok_kinds = [k for k, st in zip(cands["kind"], cands["status"], strict=True) if st == "ok"]
    assert [s["label"] for s in kinds] == [f"{k} ({ok_kinds.count(k)})"
                                           for k in dict.fromkeys(ok_kinds)]
    for series in kinds:  # each candidate in the series of its kind
        kind = series["label"].rsplit(" (", 1)[0]
        assert drawn(series, cost["xs"]) == sorted(
            x for x, k, st in zip(cands["cost_spent_tokens"], cands["kind"], cands["status"],
                                  strict=True) if k == kind and st == "ok")
    assert drawn(best, cost["xs"]) == curve["cost_spent_tokens"]
    assert [v for v in best["values"] if v is not None] == pytest.approx(curve["best_ppl"])
    assert [v for v in median["values"] if v is not None] == pytest.approx(curve["median_ppl"])
    assert cost["x_max"] >= curve["cost_spent_tokens"][-1]
    partial = set(where(cands, "ppl", "pruned"))
    assert not partial & {v for s in cost["series"] for v in s["values"] if v is not None}
    pruned, failed = lanes["series"]
    assert (pruned["label"], failed["label"]) == ("pruned (partial score, not a result)",
                                                  "failed (no score)")
    assert drawn(pruned, lanes["xs"]) == sorted(where(cands, "cost_spent_tokens", "pruned"))
    assert drawn(failed, lanes["xs"]) == sorted(where(cands, "cost_spent_tokens", "failed"))
    assert len({v for v in pruned["values"] if v is not None}) <= 1  # one lane, not a ppl


def test_finished_job_page(server, page, tmp_path):
    _manager, url, _gate = server
    gens = api(url, "/api/jobs/embedded-8x/generations")
    cands = api(url, "/api/jobs/embedded-8x/candidates")
    curve = api(url, "/api/jobs/embedded-8x/curve")
    best = api(url, "/api/jobs/embedded-8x/best")
    assert len(gens) == 41 and len(best["lambdas"]) == 32 and len(best["top_k_n_hat"]) == 32

    page.goto(f"{url}/dashboard/?token={TOKEN}&job=embedded-8x")
    # The job list: every API call carried the token, or nothing would show.
    item = page.locator('#job-list li[data-job="embedded-8x"]')
    item.locator('[data-role="state"]', has_text="finished").wait_for()
    assert item.get_attribute("data-state") == "finished"
    assert item.locator("progress").evaluate("p => p.value") == 1
    page.wait_for_selector('#job[data-state="finished"]')
    page.wait_for_function("() => ['cost', 'lanes', 'lambdas']"
                           ".every((k) => k in window.dashboard.charts)")
    charts = page.evaluate(CHART_POINTS)

    # Perplexity against cost: one point per generation on each line, every candidate once.
    assert len(curve["generation"]) == len(gens) == 41
    check_cost_chart(charts, curve, cands)
    points = sum(s["points"] for s in [*charts["cost"]["series"][2:], *charts["lanes"]["series"]])
    assert points == len(cands["ppl"]) == 64 + 40 * 32
    assert [s["label"].split(" (")[0] for s in charts["cost"]["series"][2:]] == [
        "seed", "mutation", "crossover"]
    assert page.locator('[data-card="descents"]').is_hidden()  # no gradient step in Algorithm 1
    # schema v1 tables: cost estimated, shown in human units
    assert charts["cost"]["x_label"] == "forward tokens spent (estimated)"
    assert any(t.endswith("M") for t in charts["cost"]["x_ticks"])
    # what the lane is for: many pruned one-document perplexities lie below the best
    partial = where(cands, "ppl", "pruned")
    assert min(partial) < best["search_ppl"]
    assert page.get_attribute("#candidate-counts", "data-pruned") == str(len(partial))
    legend = page.locator('[data-chart="lanes"] .u-legend').inner_text()
    assert "pruned (partial score, not a result)" in legend
    progress = page.locator("#job-progress-text").inner_text()
    assert "1344 of 1344 candidates" in progress and "9.5M tokens" in progress
    assert "generation" in page.locator("#job-facts dt").all_inner_texts()  # evolution

    lambdas = charts["lambdas"]
    assert lambdas["x"] == len(best["lambdas"]) == 32
    assert [s["label"] for s in lambdas["series"]] == ["best", "short (recovery)", "PI", "NTK",
                                                       "YaRN"]
    assert lambdas["series"][0]["values"] == pytest.approx(best["lambdas"])
    short = json.loads((RECOVERY_JOB / "best.json").read_text())["lambdas"]
    assert lambdas["series"][1]["values"] == pytest.approx(best["short_lambdas"]) == short
    assert lambdas["series"][2]["values"] == pytest.approx(best["seed_lambdas"]["pi"])

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


def test_results_by_prompt_length(server, page):
    """The main job's held-out comparison as a chart of perplexity against length: a line per
    method, every length of comparison.json, the engine's semantics above it."""
    _manager, url, _gate = server
    name = MAIN_JOB.name
    comparison = json.loads((MAIN_JOB / "comparison.json").read_text())
    page.goto(f"{url}/dashboard/?token={TOKEN}&job={name}")
    page.wait_for_function("() => 'lengths' in window.dashboard.charts")
    chart = page.evaluate(CHART_POINTS)["lengths"]
    assert chart["xs"] == comparison["lengths"] == [64, 128, 256, 512, 1024]
    labels = [s["label"] for s in chart["series"]]
    assert labels == ["best", "unmodified", "PI", "NTK", "YaRN"]
    for series, row in zip(chart["series"], comparison["rows"], strict=True):
        assert series["values"] == pytest.approx(
            [row["ppl_by_length"][str(n)] for n in comparison["lengths"]])
    assert "deploy: transformers" in page.locator("#lengths-how").inner_text()
    assert page.locator('[data-card="lengths"]').is_visible()
    page.locator('[data-card="lengths"]').screenshot(path=str(SCREENSHOT.with_name(
        "dashboard_lengths.png")))
    # a job whose comparison predates results by length has no such chart
    page.goto(f"{url}/dashboard/?token={TOKEN}&job=embedded-8x")
    page.wait_for_selector('#job[data-state="finished"]')
    page.wait_for_function("() => 'lambdas' in window.dashboard.charts")
    assert page.locator('[data-card="lengths"]').is_hidden()


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
                    "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                                  "generations": 2}})
    page.goto(f"{url}/dashboard/?token={TOKEN}&job=live")
    page.wait_for_selector('#job[data-job="live"][data-state="running"]')  # held at the gate
    page.wait_for_function("() => 'cost' in window.dashboard.charts")
    assert page.evaluate(CHART_POINTS)["cost"]["x"] == 0
    assert page.locator('[data-export="hf"]').is_disabled()
    page.evaluate("() => { window.notReloaded = true; }")

    gate.set()
    page.wait_for_function("() => window.dashboard.state.curve.generation.length === 3 &&"
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
    check_cost_chart(page.evaluate(CHART_POINTS), api(url, "/api/jobs/live/curve"),
                     api(url, "/api/jobs/live/candidates"))


def test_gradient_descents_show_one_line_per_start(server, page):
    """The gradient strategy's job: each start's steps are one line of perplexity against
    cost in their own chart, and its candidates are coloured by kind in the cost chart."""
    _manager, url, _gate = server
    curve = api(url, f"/api/jobs/{GRADIENT_JOB.name}/curve")
    cands = api(url, f"/api/jobs/{GRADIENT_JOB.name}/candidates")
    page.goto(f"{url}/dashboard/?token={TOKEN}&job={GRADIENT_JOB.name}")
    page.wait_for_selector(f'#job[data-job="{GRADIENT_JOB.name}"][data-state="finished"]')
    page.wait_for_function("() => ['cost', 'descents'].every((k) => k in window.dashboard.charts)")
    charts = page.evaluate(CHART_POINTS)
    check_cost_chart(charts, curve, cands)
    assert page.locator('[data-card="descents"]').is_visible()
    descents = charts["descents"]["series"]
    assert [s["label"] for s in descents] == [f"{d['start']} (gen 0)" for d in curve["descents"]]
    assert [d["start"] for d in curve["descents"]] == ["seed:pi", "seed:ntk", "seed:yarn"]
    for series, d in zip(descents, curve["descents"], strict=True):
        assert drawn(series, charts["descents"]["xs"]) == d["cost_spent_tokens"]
        assert [v for v in series["values"] if v is not None] == pytest.approx(d["ppl"])
    steps = sum(len(d["ppl"]) for d in curve["descents"])
    assert steps == cands["kind"].count("gradient step") == 90
    page.locator('[data-card="descents"]').screenshot(path=str(DESCENTS_SCREENSHOT))


def test_another_strategy_by_cost(server, page):
    """A TPE job with a token budget: cost against its budget, no generations; its pruned
    candidate's partial perplexity (e², far below any complete one) is only a lane mark."""
    _manager, url, _gate = server
    curve = api(url, "/api/jobs/tpe-job/curve")
    cands = api(url, "/api/jobs/tpe-job/candidates")
    page.goto(f"{url}/dashboard/?token={TOKEN}&job=tpe-job")
    page.wait_for_selector('#job[data-job="tpe-job"][data-state="cancelled"]')
    page.wait_for_function("() => ['cost', 'lanes'].every((k) => k in window.dashboard.charts)")
    charts = page.evaluate(CHART_POINTS)
    check_cost_chart(charts, curve, cands)
    assert charts["cost"]["x_label"] == "forward tokens spent"
    assert "k" in "".join(charts["cost"]["x_ticks"])  # 2k, 4k, ...
    ppls = [v for s in charts["cost"]["series"] for v in s["values"] if v is not None]
    assert min(ppls) == pytest.approx(math.exp(3.55))  # the best complete one, not e² (pruned)

    progress = page.locator("#job-progress-text").inner_text()
    assert "8 of 16 candidates" in progress and "11.5k of 20k tokens" in progress
    facts = page.locator("#job-facts dt").all_inner_texts()
    assert "strategy" in facts and "generation" not in facts
    item = page.locator('#job-list li[data-job="tpe-job"] [data-role="progress-text"]')
    assert "generation" not in item.inner_text() and "11.5k of 20k tokens" in item.inner_text()
    page.screenshot(path=str(COST_SCREENSHOT), full_page=True)


RUNNING_SCREENSHOT = Path("/tmp/dashboard_running.png")
FINISHED_SCREENSHOT = Path("/tmp/dashboard_finished.png")


def test_a_running_job_shows_its_evaluations_and_is_cancelled_and_resumed(server, page):
    """Evaluations reach the page as the ledger gets them, before their generation's table
    exists; the Cancel button stops the job inside generation 0 (no table yet, its candidates
    still shown), and Resume continues it to the end."""
    from longrope_search.search.jobdir import JobDir

    manager, url, gate = server
    manager.submit({"name": "slow", "extension_ratio": 8, "k_documents": 4,
                    "scoring": {"dtype": "float32", "device": "cpu"},
                    "search": {"population": 24, "mutations": 2, "crossovers": 2,
                                  "top_k": 8, "generations": 1}})
    page.goto(f"{url}/dashboard/?token={TOKEN}&job=slow")
    page.wait_for_selector('#job[data-job="slow"][data-state="running"]')
    assert page.locator("#job-cancel").is_enabled() and page.locator("#job-resume").is_disabled()
    gate.set()
    page.wait_for_function("() => window.dashboard.state.candidates.status.length >= 2",
                           timeout=60_000)
    assert JobDir(manager.get("slow").dir).tables() == []  # generation 0 is still running
    assert page.locator('[data-empty-for="cost"]').is_hidden()
    page.screenshot(path=str(RUNNING_SCREENSHOT), full_page=True)
    page.click("#job-cancel")
    page.wait_for_selector('#job[data-state="cancelled"]', timeout=60_000)
    seen = page.evaluate("() => window.dashboard.state.candidates.candidate_id.length")
    assert seen >= 2 and JobDir(manager.get("slow").dir).tables() == []
    assert page.locator("#candidate-table tbody tr").count() == seen
    assert page.locator("#job-resume").is_enabled()
    page.click("#job-resume")
    page.wait_for_selector('#job[data-state="finished"]', timeout=300_000)  # slow under load
    assert manager.get("slow").state == "finished"
    cands = api(url, "/api/jobs/slow/candidates")
    assert page.evaluate("() => window.dashboard.state.candidates.candidate_id.length") == \
        len(cands["candidate_id"]) == 24 + 2 + 2


def test_the_candidate_table_sorts_downloads_and_jobs_compare(server, page, tmp_path):
    import csv
    import io

    import pyarrow.parquet as pq

    _manager, url, _gate = server
    name = MAIN_JOB.name
    cands = api(url, f"/api/jobs/{name}/candidates")
    page.goto(f"{url}/dashboard/?token={TOKEN}&job={name}")
    page.wait_for_selector('#job[data-state="finished"]')
    page.wait_for_selector("#candidate-table tbody tr")
    ok = [p for p, s in zip(cands["ppl"], cands["status"], strict=True) if s == "ok"]
    # sorted by perplexity: the best complete candidate first, never a pruned one's partial
    first = page.locator("#candidate-table tbody tr").first.locator("td").nth(4).inner_text()
    assert float(first) == pytest.approx(min(ok), abs=1e-3)
    page.click('#candidate-table [data-sort="ppl"]')  # again: descending
    assert page.locator('#candidate-table th[aria-sort="descending"]').count() == 1
    first = page.locator("#candidate-table tbody tr").first.locator("td").nth(4).inner_text()
    assert float(first) == pytest.approx(max(ok), abs=1e-3)

    with page.expect_download() as info:
        page.click("#table-csv")
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
    assert len(rows) == len(cands["candidate_id"]) and rows[0]["ppl"]
    with page.expect_download() as info:
        page.click("#table-parquet")
    table = pq.read_table(info.value.path())
    assert table.num_rows == sum(pq.read_metadata(p).num_rows
                                 for p in (MAIN_JOB / "generations").rglob("*.parquet"))
    assert "lambdas" in table.column_names and "generation" in table.column_names

    page.check('#job-list input[data-compare="embedded-8x"]')
    page.wait_for_function("() => 'compare' in window.dashboard.charts")
    labels = [s["label"] for s in page.evaluate(CHART_POINTS)["compare"]["series"]]
    assert labels == ["embedded-8x", name]
    assert page.locator('[data-card="compare"]').is_visible()
    page.screenshot(path=str(FINISHED_SCREENSHOT), full_page=True)

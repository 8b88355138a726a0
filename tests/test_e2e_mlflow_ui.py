"""In a real browser: `mlflow ui` on a store holding two pipelines, loaded by headless Chromium.

The runs page lists both pipelines; the compare page of their two parent runs shows both and a
comparison metric; the evaluate run's artifacts serve the loss histogram and the per-method bars as
the very PNGs DVC tracks. Chromium is Debian's `chromium` (.ci/run installs it); without a working
one the tests are skipped, unless PTDEFENSE_REQUIRE_BROWSER=1 (set by CI) makes that a failure."""

from __future__ import annotations

import os
import urllib.request
from io import BytesIO

import pytest

import mlflow_browser as browser
from dvc_workspace import run

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def ui(tiny_workspace, tiny_reproduced):
    """The UI on the tiny workspace's store, after making sure it holds two complete pipelines."""
    missing = browser.browser_problem()
    if missing:
        if os.environ.get("PTDEFENSE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PTDEFENSE_REQUIRE_BROWSER=1, but {missing}")
        pytest.skip(missing)
    with browser.mlflow_ui(f"sqlite:///{tiny_workspace / 'mlflow.db'}") as base:
        experiment = browser.experiment_id(base)
        if len(browser.pipeline_runs(base, experiment)) < 2:  # run alone: no other module added a second one
            run(["git", "add", "-A"], tiny_workspace)
            run(["git", "commit", "-qm", "before the browser's second pipeline", "--allow-empty"], tiny_workspace)
            # --temp: the workspace (params, outputs) stays as the other modules expect it
            run(["dvc", "exp", "run", "--temp", "-S", "freeze_layers=2", "--name", "browser-freeze2"], tiny_workspace)
        pipelines = browser.pipeline_runs(base, experiment)[:2]
        assert len(pipelines) == 2, "the store should hold two complete pipelines"
        yield base, experiment, pipelines


def test_the_runs_page_lists_both_pipelines(ui):
    base, experiment, pipelines = ui
    dom = browser.rendered_dom(browser.runs_page(base, experiment))
    for pipeline in pipelines:
        assert pipeline["info"]["run_name"] in dom, pipeline["info"]["run_name"]


def test_the_compare_page_shows_both_runs_and_the_comparison_metrics(ui, tmp_path):
    from PIL import Image

    base, experiment, pipelines = ui
    run_ids = [p["info"]["run_id"] for p in pipelines]
    url = browser.compare_page(base, experiment, run_ids)
    dom = browser.rendered_dom(url)
    for pipeline in pipelines:
        assert pipeline["info"]["run_name"] in dom, pipeline["info"]["run_name"]
    # The metrics table is virtualised: its first rows, ABL's comparison metrics, are in the page.
    assert "abl.attack_success_rate" in dom and "Duration" in dom
    # The page of one comparison metric: both runs, side by side.
    dom = browser.rendered_dom(browser.metric_page(base, experiment, run_ids, "pt.attack_success_rate"))
    assert "pt.attack_success_rate" in dom
    for pipeline in pipelines:
        assert pipeline["info"]["run_name"] in dom, pipeline["info"]["run_name"]
    shot = tmp_path / "compare.png"
    browser.screenshot(url, shot)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1600, 1000) and len(image.getcolors(1 << 20) or []) > 50, "a blank page"


def _served(base: str, run_id: str, name: str) -> bytes:
    with urllib.request.urlopen(f"{base}/get-artifact?path={name}&run_uuid={run_id}", timeout=30) as response:
        return response.read()


def test_mlflow_serves_the_plots_dvc_tracks(ui, tiny_workspace):
    """The evaluate run that drew the workspace's plots serves them byte for byte, as decodable PNGs,
    and its artifacts page lists them."""
    from PIL import Image

    base, experiment, _ = ui
    evaluates = browser.api(base, "runs/search", {
        "experiment_ids": [experiment], "max_results": 100, "order_by": ["attributes.start_time DESC"],
        "filter": "tags.`ptdefense.stage` = 'evaluate' and attributes.status = 'FINISHED'"})["runs"]
    tracked = {name: (tiny_workspace / "plots" / name).read_bytes() for name in ("loss_histogram.png", "methods.png")}
    drew = [r["info"]["run_id"] for r in evaluates
            if all(_served(base, r["info"]["run_id"], name) == data for name, data in tracked.items())]
    assert drew, "no evaluate run serves the plots that DVC tracks"
    for data in tracked.values():
        image = Image.open(BytesIO(data))
        image.load()  # decodes: a PNG a browser can draw
        assert min(image.size) > 100
    dom = browser.rendered_dom(f"{base}/#/experiments/{experiment}/runs/{drew[0]}/artifacts")
    assert "loss_histogram.png" in dom and "methods.png" in dom

"""A real `mlflow ui` and headless Chromium (Debian's `chromium`), for the browser test and for the
screenshot in docs/.

    python tests/mlflow_browser.py --store sqlite:///mlflow.db --out docs/img [RUN_ID RUN_ID]

writes docs/img/mlflow-compare.png (the compare page of two pipelines' parent runs) and
docs/img/mlflow-compare-pt-asr.png (their pt.attack_success_rate). With no run ids, the two latest
pipeline runs that hold comparison metrics are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Root in a container needs --no-sandbox; the virtual time budget lets the page's own requests finish.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--window-size=1600,1000", "--virtual-time-budget=30000"]


def browser_problem() -> str | None:
    """None when headless Chromium runs here, else what is wrong (Ubuntu's `chromium` can be a snap stub)."""
    if CHROMIUM is None:
        return "headless Chromium is not installed (apt-get install chromium)"
    try:
        version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{CHROMIUM} does not run ({error})"
    return None if version.returncode == 0 and "Chromium" in version.stdout else \
        f"{CHROMIUM} --version failed ({version.returncode}): {(version.stdout + version.stderr)[-300:]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(store_uri: str, timeout: float = 180.0):
    """`mlflow ui` on 127.0.0.1 and a free port; yields its base URL once /health answers."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: an unread pipe fills and stalls the server
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"mlflow ui exited ({server.returncode}): {log.read()[-2000:]}")
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=5).read() == b"OK":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not answer /health within {timeout:.0f} s")
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def rendered_dom(url: str) -> str:
    """The page's DOM after its scripts ran (headless Chromium's --dump-dom)."""
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True,
                            timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def screenshot(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--screenshot={path.resolve()}", url], capture_output=True,
                   check=True, timeout=180)


def api(base: str, endpoint: str, payload: dict | None = None) -> dict:
    if payload is None:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{endpoint}", timeout=30) as response:
            return json.load(response)
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def experiment_id(base: str, name: str = "ptdefense") -> str:
    return api(base, f"experiments/get-by-name?experiment_name={urllib.parse.quote(name)}")["experiment"]["experiment_id"]


def pipeline_runs(base: str, experiment: str) -> list[dict]:
    """The pipelines' parent runs that hold comparison metrics, newest first."""
    found = api(base, "runs/search", {"experiment_ids": [experiment], "max_results": 200,
                                      "filter": "tags.`ptdefense.role` = 'pipeline'",
                                      "order_by": ["attributes.start_time DESC"]}).get("runs", [])
    return [run for run in found
            if any(metric["key"] == "pt.attack_success_rate" for metric in run["data"].get("metrics", []))]


def runs_page(base: str, experiment: str) -> str:
    return f"{base}/#/experiments/{experiment}/runs"


def compare_page(base: str, experiment: str, run_ids: list[str]) -> str:
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment])})
    return f"{base}/#/compare-runs?{query}"


def metric_page(base: str, experiment: str, run_ids: list[str], metric: str) -> str:
    """One metric of several runs: its chart and a table of each run's value."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "metric": json.dumps(metric),
                                    "experiments": json.dumps([experiment]), "plot_metric_keys": json.dumps([metric])})
    return f"{base}/#/metric?{query}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("runs", nargs="*")
    args = parser.parse_args()
    if browser_problem():
        sys.exit(f"error: {browser_problem()}")
    with mlflow_ui(args.store) as base:
        experiment = experiment_id(base)
        run_ids = args.runs or [run["info"]["run_id"] for run in pipeline_runs(base, experiment)[:2]]
        if len(run_ids) < 2:
            sys.exit("error: the store holds fewer than two pipelines with comparison metrics; run two first")
        screenshot(compare_page(base, experiment, run_ids), args.out / "mlflow-compare.png")
        screenshot(metric_page(base, experiment, run_ids, "pt.attack_success_rate"),
                   args.out / "mlflow-compare-pt-asr.png")
    print(f"wrote {args.out}/mlflow-compare.png and mlflow-compare-pt-asr.png (runs {', '.join(run_ids)})")


if __name__ == "__main__":
    main()

"""Screenshots of a finished study in the MLflow UI, for the README (docs/mlflow-*.png).

    pip install playwright          # drives a Chromium already on the machine; downloads no browser
    python docs/screenshots.py --store sqlite:///mlflow.db --study camvid-quick

Serves the store with `mlflow server` on a free port and opens, in headless Chromium, what a reader
of the study opens: the run tree, segkd's "methods" view (each method's summary), a student run and
the study run's report.html (report.md with its figures inlined).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from playwright.sync_api import Page, sync_playwright

from segkd import tracking

VIEWPORT = {"width": 1500, "height": 900}
SETTLE_MS = 4000  # the UI fetches runs, metrics and artifacts after the page loads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(store: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"mlflow server did not answer on port {port}")


def show(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_timeout(SETTLE_MS)
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()  # the assistant panel, which takes a third of the width
        page.wait_for_timeout(500)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--study", required=True, help="the study's name (its MLflow experiment)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)

    store = tracking.resolve_uri(args.store)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(args.study)
    if experiment is None:
        raise SystemExit(f"no experiment {args.study!r} in {store}")
    exp = experiment.experiment_id
    study_run = client.search_runs([exp], f"tags.`{tracking.NODE_TAG}` = '{tracking.STUDY_NODE}'")[0]
    student = client.search_runs([exp], "tags.role = 'student'", order_by=["tags.`mlflow.runName` ASC"])[0]

    port = free_port()
    host = f"http://127.0.0.1:{port}"
    server = serve(store, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)

            show(page, tracking.study_url(exp, host, view=None))  # the run tree, study run opened
            page.locator("[data-component-id$='runnamecellrenderer.tsx_46']").first.click()
            page.wait_for_timeout(1500)
            page.screenshot(path=args.out / "mlflow-runs.png")

            show(page, tracking.study_url(exp, host))  # segkd's methods view
            page.screenshot(path=args.out / "mlflow-methods.png")

            show(page, f"{host}/#/experiments/{exp}/runs/{student.info.run_id}?workflowType=machine_learning")
            page.screenshot(path=args.out / "mlflow-student-run.png", full_page=True)

            show(page, f"{host}/#/experiments/{exp}/runs/{study_run.info.run_id}/artifacts"
                       "?workflowType=machine_learning")
            page.get_by_text("report.html", exact=True).first.click()
            page.wait_for_timeout(SETTLE_MS)
            page.screenshot(path=args.out / "mlflow-report.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {', '.join(f'mlflow-{n}.png' for n in ('runs', 'methods', 'student-run', 'report'))} to {args.out}")


if __name__ == "__main__":
    main()

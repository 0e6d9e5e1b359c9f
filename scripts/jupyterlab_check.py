"""Drive JupyterLab in headless Chromium as a user would: open each notebook, Run All, wait, fail on any error
output, check that the widgets render and redraw when moved, and keep screenshots.

Needs Debian's chromium (``apt-get install chromium``) and ``pip install playwright`` (no browser download: the
system Chromium is used). Start JupyterLab first, e.g. ``make lab LAB_ARGS="--no-browser --port 8899
--IdentityProvider.token=check"`` (plus ``--allow-root`` as root) in a throwaway clone (JupyterLab autosaves
outputs into the notebooks), then
``python scripts/jupyterlab_check.py --url http://127.0.0.1:8899 --token check --shots shots 00_data_prep.ipynb ...``.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'  # errors render as stderr too
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception|Interrupt)\b", re.M)


def errors(page: Page):
    """The error outputs of the open notebook (stderr outputs holding a traceback; warnings do not count)."""
    return page.locator(STDERR, has_text=TRACEBACK)


def run_all(page: Page, timeout_s: float, shots: Path, stem: str) -> float:
    """Run > Run All Cells; wait until every code cell has run and the kernel is idle; returns seconds."""
    page.wait_for_timeout(3000)
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and "Select Kernel" in dialog.inner_text():  # a notebook JupyterLab has no session for yet
        dialog.locator(".jp-mod-accept").click()
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(timeout=120_000)
    start = time.monotonic()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_timeout(3000)
    page.screenshot(path=shots / f"{stem}_start.png")
    logged = start
    while time.monotonic() - start < timeout_s:
        prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]
        busy = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() == 0
        # cells scrolled out of view may render no prompt; Run All keeps the running cell, finally the last, in view
        if prompts and not busy and "[*]:" not in prompts and prompts[-1] not in ("[ ]:", ""):
            return time.monotonic() - start
        if errors(page).count():
            break
        if time.monotonic() - logged > 60:
            logged = time.monotonic()
            print(f"  {stem}: {time.monotonic() - start:.0f} s, kernel {'busy' if busy else 'idle'}, prompts {prompts}",
                  flush=True)
        page.wait_for_timeout(2000)
    return time.monotonic() - start


def widget_image(page: Page) -> str:
    """The src of the last image inside a widget's output area (what an explorer shows now)."""
    images = page.locator(".jupyter-widgets .jp-OutputArea-output img, .widget-output img")
    return images.last.get_attribute("src") if images.count() else ""


def move_widgets(page: Page, shots: Path, stem: str) -> list[str]:
    """Move every slider, pick the last entry of every dropdown, press an unpressed button of every row of toggle
    buttons, flip every checkbox and add one to every number box of the explorer; returns what failed to redraw
    it."""
    failures = []
    controls = {"slider": page.locator(".widget-slider .noUi-handle"),
                "dropdown": page.locator(".widget-dropdown select"),
                "toggle": page.locator(".widget-toggle-buttons"),
                "checkbox": page.locator(".widget-checkbox input"),
                "number": page.locator(".widget-text input[type=number]")}
    for kind, locator in controls.items():
        for i in range(locator.count()):
            before = widget_image(page)
            element = locator.nth(i)
            element.scroll_into_view_if_needed()
            if kind == "slider":
                element.focus()
                for _ in range(3):
                    element.press("ArrowRight")
            elif kind == "dropdown":
                options = element.locator("option").all_inner_texts()
                if len(options) < 2:
                    continue
                element.select_option(index=len(options) - 1)
            elif kind == "toggle":
                element.locator("button:not(.mod-active)").first.click()
            elif kind == "checkbox":
                element.click()
            else:
                element.fill(str(int(element.input_value() or 0) + 1))
                element.press("Enter")
            for _ in range(60):  # redraws may synthesise: up to a minute
                page.wait_for_timeout(1000)
                if widget_image(page) not in ("", before):
                    break
            else:
                failures.append(f"{stem}: {kind} {i} did not redraw the explorer")
            # a slider moved by three steps redraws three times: the screenshot shows the last
            page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(timeout=120_000)
            page.locator(".widget-output").last.scroll_into_view_if_needed()  # show what was redrawn
            page.screenshot(path=shots / f"{stem}_{kind}{i}.png", full_page=False)
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", help="notebook paths relative to JupyterLab's root")
    parser.add_argument("--url", default="http://127.0.0.1:8899")
    parser.add_argument("--token", default="check")
    parser.add_argument("--shots", type=Path, default=Path("shots"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per notebook")
    args = parser.parse_args(argv)
    args.shots.mkdir(parents=True, exist_ok=True)
    failures, report = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        for notebook in args.notebooks:
            stem = Path(notebook).stem
            page.goto(f"{args.url}/lab/tree/{notebook}?reset&token={args.token}")  # reset: this tab only
            page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
            seconds = run_all(page, args.timeout, args.shots, stem)
            if seconds >= args.timeout:
                failures.append(f"{stem}: still running after {args.timeout:.0f} s")
            if errors(page).count():
                failures.append(f"{stem}: error output: {errors(page).first.inner_text()[:2000]}")
            widgets = page.locator(".jupyter-widgets.widget-slider, .widget-slider").count()
            broken = page.get_by_text("Error displaying widget").count() + page.get_by_text(
                "Loading widget...").count()
            if broken:
                failures.append(f"{stem}: {broken} widget(s) failed to render")
            page.screenshot(path=args.shots / f"{stem}_end.png", full_page=False)
            if widgets:
                failures += move_widgets(page, args.shots, stem)
            report.append(f"{stem}: ran in {seconds:.0f} s, {widgets} slider(s), {broken} broken widget(s)")
            print(report[-1], flush=True)
        browser.close()
    print("\n".join(failures) or "no failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

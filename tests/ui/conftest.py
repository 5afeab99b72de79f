"""Browser tests of the web UI: Debian's ``chromium`` driven by Playwright for Python
(headless) against a real ``dagengine serve`` (:mod:`uiserver`).

Skipped, with the reason, where chromium or playwright is missing; with
``DAGENGINE_REQUIRE_BROWSER=1`` (CI) they fail instead, so they cannot vanish silently.
Screenshots of every test's last page go to ``DAGENGINE_UI_SCREENSHOTS`` (default: a
temporary folder, printed at the end of the session).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uiserver import Server, make_server

#: Debian's chromium (``DAGENGINE_CHROMIUM`` points elsewhere: the skip test uses a missing one).
CHROMIUM = os.environ.get("DAGENGINE_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REQUIRE = "DAGENGINE_REQUIRE_BROWSER"


@functools.cache
def screenshots() -> Path:
    """The screenshot folder (made on first use: skipped runs leave no empty folder)."""
    return Path(
        os.environ.get("DAGENGINE_UI_SCREENSHOTS") or tempfile.mkdtemp(prefix="dagengine-ui-")
    )


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/browser.sh)"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    problem = browser_problem()
    if problem is not None:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        yield chromium
        chromium.close()
    print(f"\nUI screenshots: {screenshots()}")


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page at 1280x800; fails the test on a page error; screenshot at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    dialogs: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    pg.set_default_timeout(20_000)
    pg.errors = errors  # type: ignore[attr-defined]
    pg.dialogs = dialogs  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        folder = screenshots()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            pg.screenshot(path=str(folder / f"{request.node.name}.png"), full_page=True)
        finally:
            context.close()
    assert not errors, f"page errors: {errors}"
    assert not dialogs, f"the page opened dialogs (script ran): {dialogs}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(
        tmp_path_factory.mktemp("ui"),
        """
triggers:
  - {type: cron, id: yearly, workflow_id: quick, schedule: "0 0 1 1 *"}
  - {type: http, id: hook, path: /hooks/quick, workflow_id: quick, auth: bearer, secret: s}
""",
    )
    yield srv
    srv.stop()

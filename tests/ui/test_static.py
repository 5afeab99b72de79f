"""The UI's files ship inside the package and load nothing from elsewhere; the browser tests
skip without chromium, or fail when CI requires them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_static_files_are_in_the_package() -> None:
    from dagengine.api.ui.routes import STATIC_DIR

    names = {p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert {"index.html", "style.css", "js/app.js", "js/graph.js", "js/api.js"} <= names
    # No inline script and nothing fetched from elsewhere: the UI works air-gapped.
    html = (STATIC_DIR / "index.html").read_text()
    assert "<script>" not in html
    for name in names:
        text = (STATIC_DIR / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
        assert "innerHTML" not in text


def _run_a_browser_test(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    test = Path(__file__).with_name("test_ui.py")
    return subprocess.run(
        [sys.executable, "-m", "pytest", f"{test}::test_root_redirects_to_the_ui", "-q", "-rs",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "DAGENGINE_CHROMIUM": "/nonexistent/chromium", **env},
    )  # fmt: skip


def test_without_chromium_the_browser_tests_skip_unless_required() -> None:
    skipped = _run_a_browser_test({"DAGENGINE_REQUIRE_BROWSER": "0"})
    assert skipped.returncode == 0, skipped.stdout
    assert "1 skipped" in skipped.stdout
    assert "/nonexistent/chromium is missing" in skipped.stdout
    required = _run_a_browser_test({"DAGENGINE_REQUIRE_BROWSER": "1"})
    assert required.returncode != 0
    assert "DAGENGINE_REQUIRE_BROWSER=1 but /nonexistent/chromium is missing" in required.stdout

"""The UI's files ship inside the package and load nothing from elsewhere."""

from __future__ import annotations


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

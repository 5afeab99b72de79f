"""A small client of the HTTP API, behind ``dagengine submit/runs/status/cancel/workflows/logs``.

Standard library only (``urllib``), so the CLI needs nothing the server does not. Every
failure — cannot connect, an HTTP error status, a body that is not JSON — is an
:class:`ApiClientError` carrying one line of text (the server's ``error`` field when it sent
one) and the status.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from dagengine.exceptions import DagEngineError

__all__ = ["DEFAULT_URL", "ApiClient", "ApiClientError"]

#: Where the CLI looks for the server unless ``--url`` or ``DAGENGINE_URL`` says otherwise.
DEFAULT_URL = "http://127.0.0.1:8080"


class ApiClientError(DagEngineError):
    """A request to the API failed; ``status`` is the HTTP status (``None``: no answer)."""

    def __init__(self, message: str = "", /, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """Calls the API at ``url`` (default ``$DAGENGINE_URL`` or :data:`DEFAULT_URL`)."""

    def __init__(
        self, url: str | None = None, *, token: str | None = None, timeout: float | None = 30.0
    ) -> None:
        self.url = (url or os.environ.get("DAGENGINE_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else (os.environ.get("DAGENGINE_TOKEN") or None)
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        timeout: float | None = -1.0,
    ) -> Any:
        """Send one request and return the decoded JSON answer."""
        url = self.url + path
        if query:
            pairs = {k: v for k, v in query.items() if v is not None}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        wait = self.timeout if timeout == -1.0 else timeout
        try:
            with urllib.request.urlopen(req, timeout=wait) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            message = f"HTTP {exc.code}"
            with contextlib.suppress(ValueError, KeyError, TypeError):
                message += f": {json.loads(raw)['error']}"
            raise ApiClientError(message, status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiClientError(f"cannot reach {self.url}: {reason}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ApiClientError(f"{method} {path}: the answer is not JSON") from None

    # -- the API --------------------------------------------------------------------------

    def submit(
        self,
        workflow_id: str,
        inputs: dict[str, Any],
        *,
        version: str | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """Start a run; with ``wait`` the finished run (no client timeout), else its id."""
        body: dict[str, Any] = {"inputs": inputs, "wait": wait}
        if version is not None:
            body["version"] = version
        path = f"/workflows/{urllib.parse.quote(workflow_id, safe='')}/runs"
        result: dict[str, Any] = self.request("POST", path, body, timeout=None if wait else -1.0)
        return result

    def runs(self, **filters: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/runs", query=filters)
        return result

    def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/runs/{urllib.parse.quote(run_id, safe='')}")
        return result

    def cancel(self, run_id: str) -> dict[str, Any]:
        path = f"/runs/{urllib.parse.quote(run_id, safe='')}/cancel"
        result: dict[str, Any] = self.request("POST", path, {})
        return result

    def workflows(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/workflows")
        return result

    def clear_cache(self, workflow_id: str, *, node: str | None = None) -> int:
        """Delete a workflow's cached node outputs (``node``: only that node's); how many."""
        path = f"/workflows/{urllib.parse.quote(workflow_id, safe='')}/cache"
        result: dict[str, Any] = self.request("DELETE", path, query={"node": node})
        return int(result["deleted"])

    def logs(
        self, run_id: str, *, node: str | None = None, after: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """A run's stored log lines (of ``node`` only, if given), oldest first, page by page."""
        path = f"/runs/{urllib.parse.quote(run_id, safe='')}/logs"
        while True:
            page = self.request("GET", path, query={"node": node, "after": after})
            yield from page["lines"]
            after = page["next_after"]
            if after is None:
                return

    def follow_logs(self, run_id: str, *, node: str | None = None) -> Iterator[dict[str, Any]]:
        """A run's log lines as they come (server-sent events) until the run ends."""
        query = {"follow": "true", **({"node": node} if node is not None else {})}
        url = (
            f"{self.url}/runs/{urllib.parse.quote(run_id, safe='')}/logs?"
            + urllib.parse.urlencode(query)
        )
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, method="GET", headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=None)
        except urllib.error.HTTPError as exc:
            message = f"HTTP {exc.code}"
            with contextlib.suppress(ValueError, KeyError, TypeError):
                message += f": {json.loads(exc.read())['error']}"
            raise ApiClientError(message, status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiClientError(f"cannot reach {self.url}: {reason}") from None
        with resp:
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data: "):
                    yield json.loads(line.removeprefix("data: "))

"""The web UI in a real browser against a real ``dagengine serve``: the runs list (filters,
keyset pages, live), a run's graph going live to its end, the node panel (traceback, logs),
cancel, retry from failed, re-run, the run form, version yank/rollback, triggers, engines,
and that nothing user-controlled is ever run as markup."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from playwright.sync_api import expect
from uiserver import Server, make_server

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def start(server: Server, workflow: str, **inputs: Any) -> str:
    with server.client() as client:
        answer = client.post(f"/workflows/{workflow}/runs", json={"inputs": inputs})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["run_id"])


def run_now(server: Server, workflow: str, **inputs: Any) -> dict[str, Any]:
    with server.client() as client:
        answer = client.post(f"/workflows/{workflow}/runs", json={"inputs": inputs, "wait": True})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def node(page: Any, node_id: str) -> Any:
    return page.locator(f'svg.dag g.node[data-node="{node_id}"]')


def test_root_redirects_to_the_ui(page: Any, server: Server) -> None:
    page.goto(server.url + "/")
    assert page.url == server.url + "/ui/"
    expect(page.locator("h1")).to_have_text("Runs")


def test_runs_list_filters_pages_and_goes_live(page: Any, server: Server) -> None:
    ok = [run_now(server, "quick", n=i)["run_id"] for i in range(3)]
    failed = run_now(server, "failing")["run_id"]
    page.goto(server.url + "/ui/#/runs")
    rows = page.locator("#runs-body tr")
    for run_id in [*ok, failed]:
        expect(page.locator(f'#runs-body tr[data-run="{run_id}"]')).to_be_visible()
    # Filter by status: only failed runs remain.
    page.select_option("#f-status", "failed")
    page.click("form.filters button[type=submit]")
    expect(page.locator(f'#runs-body tr[data-run="{failed}"]')).to_be_visible()
    expect(page.locator(f'#runs-body tr[data-run="{ok[0]}"]')).to_have_count(0)
    for status in rows.evaluate_all("rs => rs.map(r => r.dataset.status)"):
        assert status == "failed"
    # By workflow, two a page: keyset pages walk back in time without repeats.
    page.goto(server.url + "/ui/#/runs?workflow_id=quick&limit=2")
    expect(rows).to_have_count(2)
    first = rows.evaluate_all("rs => rs.map(r => r.dataset.run)")
    assert first == [ok[2], ok[1]]
    page.click("#older")
    expect(page.locator(f'#runs-body tr[data-run="{ok[0]}"]')).to_be_visible()
    assert "before=" in page.url
    # A time window that ends before these runs: none.
    page.goto(server.url + "/ui/#/runs?until=1000")
    expect(page.locator("#runs-body td.empty")).to_be_visible()
    # Live: a run started elsewhere shows up on the first page and changes status.
    page.goto(server.url + "/ui/#/runs?workflow_id=gated")
    expect(page.locator("#live")).to_have_text(re.compile("live"))
    tag = uuid.uuid4().hex
    run_id = start(server, "gated", gate=tag)
    row = page.locator(f'#runs-body tr[data-run="{run_id}"]')
    expect(row).to_have_attribute("data-status", "running")
    server.open(tag)
    expect(row).to_have_attribute("data-status", "succeeded")


def test_run_graph_goes_live_to_the_end(page: Any, server: Server) -> None:
    tag = uuid.uuid4().hex
    run_id = start(server, "gated", gate=tag)
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    expect(node(page, "first")).to_have_attribute("data-state", "succeeded")
    expect(node(page, "wait")).to_have_attribute("data-state", "running")
    expect(node(page, "after")).not_to_have_attribute("data-state", re.compile("."))
    expect(page.locator("#run-status")).to_have_attribute("data-status", "running")
    # The node panel, opened while the node runs, follows its logs: the in-process engine
    # delivers a Python node's captured lines when its attempt ends, and they arrive live.
    node(page, "wait").click()
    expect(page.locator("#panel-title")).to_have_text("wait")
    expect(page.locator("#node-logs")).not_to_have_attribute("data-ended", "true")
    server.open(tag)
    expect(page.locator("#node-logs")).to_contain_text(f"waiting for gate {tag}")
    expect(node(page, "wait")).to_have_attribute("data-state", "succeeded")
    expect(node(page, "after")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#node-logs")).to_contain_text(f"gate {tag} opened=True")
    expect(page.locator("#node-logs")).to_have_attribute("data-ended", "true")
    expect(page.locator("#panel-output")).to_contain_text('"opened": true')
    assert "null" not in page.locator("#node-panel").inner_text()  # no stray text nodes
    expect(page.locator("#cancel")).to_be_disabled()


def test_failed_node_panel_shows_traceback_and_logs(page: Any, server: Server) -> None:
    run_id = run_now(server, "failing")["run_id"]
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    expect(node(page, "boom")).to_have_attribute("data-state", "failed")
    expect(node(page, "never")).to_have_attribute("data-state", "skipped")
    # Keyboard: focus the node and press Enter.
    node(page, "boom").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#panel-title")).to_have_text("boom")
    expect(page.locator("#panel-error")).to_contain_text("ValueError")
    expect(page.locator("#panel-traceback")).to_contain_text("kaboom")
    expect(page.locator("#node-logs")).to_contain_text("about to fail")
    expect(page.locator("#node-logs")).to_have_attribute("data-ended", "true")
    node(page, "fine").click()
    expect(page.locator("#node-logs")).to_contain_text("hello from fine")
    expect(page.locator("#node-logs")).to_contain_text("fine is done")
    expect(page.locator("#panel-output")).to_contain_text('"n": 1')
    page.click("#node-panel button.close")
    expect(page.locator("#node-panel")).to_be_hidden()


def test_cancel_a_long_run(page: Any, server: Server) -> None:
    run_id = start(server, "gated", gate="never")
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    expect(node(page, "wait")).to_have_attribute("data-state", "running")
    page.click("#cancel")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#retry")).to_be_enabled()
    with server.client() as client:
        assert client.get(f"/runs/{run_id}").json()["status"] == "cancelled"


def test_retry_from_failed_reuses_completed_nodes(page: Any, server: Server) -> None:
    tag = uuid.uuid4().hex
    failed = run_now(server, "flaky", tag=tag)
    assert failed["status"] == "failed"
    page.goto(f"{server.url}/ui/#/runs/{failed['run_id']}")
    expect(node(page, "gate")).to_have_attribute("data-state", "failed")
    server.open(f"flaky-{tag}")
    page.click("#retry")
    page.wait_for_url(re.compile(r"#/runs/(?!" + failed["run_id"] + ")"))
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    expect(node(page, "once")).to_have_attribute("data-state", "succeeded")
    expect(node(page, "once").locator("text.sub")).to_have_text("reused")
    expect(node(page, "last")).to_have_attribute("data-state", "succeeded")
    # The reused node did not run again.
    assert (server.gates / f"count-{tag}").read_text() == "ran\n"


def test_rerun_starts_the_same_inputs_again(page: Any, server: Server) -> None:
    first = run_now(server, "quick", n=41)
    page.goto(f"{server.url}/ui/#/runs/{first['run_id']}")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    page.click("#rerun")
    page.wait_for_url(re.compile(r"#/runs/(?!" + first["run_id"] + ")"))
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    new_id = page.url.rsplit("/", 1)[-1]
    with server.client() as client:
        assert client.get(f"/runs/{new_id}").json()["outputs"]["b"] == {"v": 84}


def test_run_form_submits_and_the_run_goes_live(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/ui/#/workflows/quick")
    expect(page.locator("svg.dag g.node")).to_have_count(2)
    page.fill("#in-json", "{bad json")
    page.click("#run-submit")
    expect(page.locator("#run-form-error")).to_contain_text("inputs:")
    page.fill("#in-json", '{"n": 4}')
    page.click("#run-submit")
    page.wait_for_url(re.compile(r"#/runs/"))
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    run_id = page.url.rsplit("/", 1)[-1]
    with server.client() as client:
        assert client.get(f"/runs/{run_id}").json()["outputs"]["b"] == {"v": 10}


def test_run_form_from_the_input_schema(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/ui/#/workflows/typed")
    expect(page.locator("#in-name")).to_be_visible()
    expect(page.locator("#in-factor")).to_have_value("2")  # the schema's default
    assert page.locator("#in-mode option").all_inner_texts() == ["—", "fast", "slow"]
    # The browser holds the schema's bounds (min 1) ...
    page.fill("#in-name", "ada")
    page.fill("#in-factor", "0")
    page.click("#run-submit")
    assert page.evaluate("document.querySelector('#in-factor').validity.rangeUnderflow")
    # ... and what it cannot check the server refuses, its problems listed by path.
    page.fill("#in-factor", "3")
    page.fill("#in-tags", '["x", 1]')
    page.click("#run-submit")
    expect(page.locator("#run-form-problems")).to_contain_text("inputs.tags[1]")
    page.select_option("#in-mode", label="slow")
    page.check("#in-loud")
    page.fill("#in-tags", '["x", "y"]')
    page.click("#run-submit")
    page.wait_for_url(re.compile(r"#/runs/"))
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    run_id = page.url.rsplit("/", 1)[-1]
    with server.client() as client:
        output = client.get(f"/runs/{run_id}").json()["outputs"]["greet"]
    assert output == {"text": "ada x3", "mode": "slow", "loud": True, "tags": ["x", "y"]}


def test_condition_skipped_nodes_are_marked(page: Any, server: Server) -> None:
    run_id = run_now(server, "cond")["run_id"]
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    expect(node(page, "big")).to_have_attribute("data-state", "skipped")
    expect(node(page, "big").locator("text.sub")).to_have_text("skipped: condition")
    expect(node(page, "small")).to_have_attribute("data-state", "succeeded")
    expect(node(page, "big").locator("title")).to_contain_text("when: results.probe.x > 5")


def test_yank_and_roll_back_versions(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/ui/#/workflows/versioned")
    versions = page.locator("#versions tr")
    expect(versions).to_have_count(2)
    assert versions.evaluate_all("rs => rs.map(r => r.dataset.version)") == ["1.1.0", "1.0.0"]
    expect(page.locator("#latest")).to_have_text("1.1.0")
    page.click("#rollback")
    expect(page.locator("#latest")).to_have_text("1.0.0")
    expect(page.locator('#versions tr[data-version="1.1.0"]')).to_contain_text("yanked")
    with server.client() as client:
        assert run_now(server, "versioned")["version"] == "1.0.0"
        exact = client.post("/workflows/versioned/runs", json={"version": "1.1.0", "wait": True})
        assert exact.json()["version"] == "1.1.0"  # exact references still work
    page.click('#versions tr[data-version="1.1.0"] button.unyank')
    expect(page.locator("#latest")).to_have_text("1.1.0")
    page.click('#versions tr[data-version="1.0.0"] button.yank')
    expect(page.locator('#versions tr[data-version="1.0.0"]')).to_contain_text("yanked")
    expect(page.locator("#latest")).to_have_text("1.1.0")
    page.click('#versions tr[data-version="1.0.0"] button.unyank')
    expect(page.locator('#versions tr[data-version="1.0.0"] button.yank')).to_be_visible()


def test_triggers_and_engines(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/ui/#/triggers")
    cron = page.locator('#cron-body tr[data-trigger="yearly"]')
    expect(cron).to_contain_text("0 0 1 1 *")
    expect(cron.locator("li").first).to_contain_text("-01-01T00:00:00")
    expect(page.locator("#http-body")).to_contain_text(f"POST {server.url}/hooks/quick")
    expect(page.locator("#http-body")).to_contain_text("bearer")
    cron.locator("button.toggle").click()
    expect(cron).to_contain_text("paused")
    with server.client() as client:
        assert client.get("/triggers").json()["cron"][0]["paused"] is True
    cron.locator("button.toggle").click()
    expect(cron.locator("button.toggle")).to_have_text("Pause")
    page.goto(f"{server.url}/ui/#/engines")
    local = page.locator('#engines-body tr[data-engine="local"]')
    expect(local).to_contain_text("healthy")
    expect(local).to_contain_text("in-process")


def test_user_controlled_text_never_runs(page: Any, server: Server) -> None:
    run_id = run_now(server, "evil")["run_id"]
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    img_id = "<img src=x onerror=window.__xss=1>"
    script_id = "<script>window.__xss=4</script>"
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    page.locator("svg.dag g.node").nth(0).click()
    expect(page.locator("#panel-title")).to_have_text(img_id)
    expect(page.locator("#node-logs")).to_contain_text("<img src=y onerror=window.__xss=3>")
    expect(page.locator("#panel-output")).to_contain_text("<script>window.__xss=2</script>")
    page.locator("svg.dag g.node").nth(1).click()
    expect(page.locator("#panel-title")).to_have_text(script_id)
    expect(page.locator("#node-logs")).to_contain_text("<script>window.__xss=5</script>")
    expect(page.locator("#panel-output")).to_contain_text("onerror=window.__xss=6")
    page.goto(f"{server.url}/ui/#/workflows/evil")
    expect(page.locator("svg.dag g.node")).to_have_count(2)
    page.goto(f"{server.url}/ui/#/runs")
    expect(page.locator(f'#runs-body tr[data-run="{run_id}"]')).to_be_visible()
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img").count() == 0
    assert page.locator("main script").count() == 0


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = make_server(tmp_path_factory.mktemp("ui-token"), "http: {token: t0ken-for-ui}\n")
    yield srv
    srv.stop()


def test_token_prompt_and_header(page: Any, token_server: Server) -> None:
    run_id = run_now_token(token_server)
    sent: list[str | None] = []
    page.on(
        "request",
        lambda r: sent.append(r.headers.get("authorization")) if "/runs" in r.url else None,
    )
    page.goto(token_server.url + "/ui/#/runs")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.fill("#token-input", "wrong")
    page.click("#token-submit")
    expect(page.locator("#token-error")).to_have_text("That token was refused.")
    page.fill("#token-input", "t0ken-for-ui")
    page.click("#token-submit")
    expect(dialog).to_be_hidden()
    expect(page.locator(f'#runs-body tr[data-run="{run_id}"]')).to_be_visible()
    assert "Bearer t0ken-for-ui" in sent
    assert "t0ken" not in page.url
    # The token stays for this tab: a run page and its streams need no new prompt.
    page.click(f'#runs-body tr[data-run="{run_id}"] a.mono')
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    expect(dialog).to_be_hidden()


def run_now_token(server: Server) -> str:
    with server.client("t0ken-for-ui") as client:
        answer = client.post("/workflows/quick/runs", json={"wait": True})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["run_id"])


def test_phone_width_and_keyboard(page: Any, server: Server) -> None:
    run_id = run_now(server, "failing")["run_id"]
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    expect(node(page, "boom")).to_have_attribute("data-state", "failed")
    node(page, "boom").click()
    expect(page.locator("#panel-traceback")).to_contain_text("kaboom")
    # Nothing wider than the screen: the graph and tables scroll inside their boxes, and the
    # node panel goes under the graph.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    graph = page.locator(".graph-scroll").bounding_box()
    panel = page.locator("#node-panel").bounding_box()
    assert graph is not None
    assert panel is not None
    assert panel["y"] >= graph["y"] + graph["height"]
    assert panel["width"] <= 390
    page.goto(f"{server.url}/ui/#/runs")
    page.reload()
    expect(page.locator("#runs-body tr").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # Keyboard only: the skip link first, then the sections; Enter follows a link.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Workflows"
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Workflows")


def test_a_dropped_event_stream_is_resumed(page: Any, server: Server) -> None:
    tag = uuid.uuid4().hex
    run_id = start(server, "gated", gate=tag)
    dropped: list[str] = []

    def drop_first(route: Any) -> None:
        if not dropped:
            dropped.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(re.compile(r".*/runs/[0-9a-f]+/events$"), drop_first)
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    expect(node(page, "wait")).to_have_attribute("data-state", "running")
    server.open(tag)
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    expect(node(page, "after")).to_have_attribute("data-state", "succeeded")
    assert len(dropped) == 1


LAYOUT_CHECK = """async () => {
  const {layout} = await import('/ui/js/graph.js');
  const diamond = [
    {id: 'a', deps: []}, {id: 'b', deps: ['a']}, {id: 'c', deps: ['a']},
    {id: 'd', deps: ['b', 'c']}, {id: 'e', deps: ['a', 'd']},
  ];
  const small = layout(diamond).place;
  // A random DAG: every edge must go to a later layer, no two nodes may share a place.
  let seed = 7;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const nodes = [];
  for (let i = 0; i < 300; i++) {
    const deps = [];
    for (let j = 0; j < 3 && i > 0; j++) deps.push(`n${Math.floor(rand() * i)}`);
    nodes.push({id: `n${i}`, deps: [...new Set(deps)]});
  }
  const big = layout(nodes).place;
  const forward = nodes.every((n) => n.deps.every((d) => big.get(d).layer < big.get(n.id).layer));
  const longest = nodes.every((n) => big.get(n.id).layer ===
    (n.deps.length ? Math.max(...n.deps.map((d) => big.get(d).layer)) + 1 : 0));
  const places = new Set(nodes.map((n) => `${big.get(n.id).layer}:${big.get(n.id).row}`));
  return {
    small: Object.fromEntries([...small].map(([id, p]) => [id, p.layer])),
    forward, longest, distinct: places.size === nodes.length,
  };
}"""


def test_layered_layout(page: Any, server: Server) -> None:
    page.goto(server.url + "/ui/")
    result = page.evaluate(LAYOUT_CHECK)
    assert result["small"] == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3}
    assert result["forward"]
    assert result["longest"]
    assert result["distinct"]


def _sse(run_id: str, events: list[tuple[str, str, dict[str, Any]]]) -> str:
    """A run's event stream as the API sends it: ``(type, node_id, data)`` each."""
    import json

    blocks = []
    for seq, (kind, node_id, data) in enumerate(events, start=1):
        event = {
            "seq": seq,
            "time": 1_700_000_000.0 + seq,
            "type": kind,
            "severity": "error" if kind == "node.failed" else "info",
            "workflow_id": "quick",
            "run_id": run_id,
            "node_id": node_id,
            "engine_id": None,
            "data": data,
        }
        blocks.append(f"id: {seq}\nevent: {kind}\ndata: {json.dumps(event)}\n\n")
    return "".join(blocks)


def test_a_mapped_node_is_drawn_once_with_its_item_counts(page: Any, server: Server) -> None:
    # Synthetic events of a mapped node: b expands to four items b[0]..b[3] (node.mapped),
    # each with node events of its own: one succeeds, one fails, one runs, one waits.
    run_id = run_now(server, "quick")["run_id"]
    error = {"type": "ValueError", "message": "item 1 broke"}
    events = [
        ("node.started", "a", {"node_attempt": 1}),
        ("node.succeeded", "a", {"node_attempt": 1}),
        ("node.mapped", "b", {"count": 4}),
        ("node.started", "b[0]", {"node_attempt": 1}),
        ("node.started", "b[1]", {"node_attempt": 1}),
        ("node.started", "b[2]", {"node_attempt": 1}),
        ("node.succeeded", "b[0]", {"node_attempt": 1}),
        ("node.failed", "b[1]", {"node_attempt": 1, "error": error}),
    ]
    body = _sse(run_id, events)
    page.route(
        re.compile(rf".*/runs/{run_id}/events$"),
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=body
        ),
    )
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    expect(page.locator("main")).to_have_attribute("data-stream-ended", "true")
    b = node(page, "b")
    expect(b).to_have_attribute("data-items", "1/1/1/4")
    expect(b.locator("text.sub")).to_have_text("1/4 · 1 failed · 1 running")
    expect(b).to_have_attribute("aria-label", "node b: 1/4 · 1 failed · 1 running")
    # One graph node for the mapped node, none per item.
    expect(page.locator("svg.dag g.node")).to_have_count(2)
    b.click()
    expect(page.locator("#panel-item-counts")).to_have_text("4 items: 1 done, 1 failed, 1 running")
    rows = page.locator("#panel-items tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_have_attribute("data-state", "succeeded")
    expect(rows.nth(1)).to_have_attribute("data-state", "failed")
    expect(rows.nth(1)).to_contain_text("b[1]")
    expect(rows.nth(1)).to_contain_text("ValueError: item 1 broke")
    expect(rows.nth(2)).to_have_attribute("data-state", "running")


def test_a_real_mapped_run_shows_its_items(page: Any, server: Server) -> None:
    run_id = run_now(server, "mapped")["run_id"]
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    sq = node(page, "sq")
    expect(sq).to_have_attribute("data-items", "3/1/0/4")
    expect(sq.locator("text.sub")).to_have_text("3/4 · 1 failed")
    expect(page.locator("svg.dag g.node")).to_have_count(3)
    expect(sq.locator("title")).to_contain_text("map: results.src.items")
    sq.click()
    rows = page.locator("#panel-items tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(2)).to_have_attribute("data-state", "failed")
    expect(rows.nth(2)).to_contain_text("ValueError: three is bad")
    expect(page.locator("#panel-output")).to_contain_text('"v": 16')


def test_a_mapped_node_with_thousands_of_items(page: Any, server: Server) -> None:
    run_id = run_now(server, "quick")["run_id"]
    n = 5000
    events: list[tuple[str, str, dict[str, Any]]] = [("node.mapped", "b", {"count": n})]
    for i in range(n):
        events.append(("node.started", f"b[{i}]", {"node_attempt": 1}))
    for i in range(n):
        events.append(("node.succeeded" if i % 100 else "node.failed", f"b[{i}]", {}))
    body = _sse(run_id, events)
    page.route(
        re.compile(rf".*/runs/{run_id}/events$"),
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=body
        ),
    )
    page.goto(f"{server.url}/ui/#/runs/{run_id}")
    expect(page.locator("#event-count")).to_have_text(f"{len(events)} events")
    expect(node(page, "b")).to_have_attribute("data-items", f"{n - 50}/50/0/{n}")
    node(page, "b").click()
    expect(page.locator("#panel-items tbody tr")).to_have_count(500)
    expect(page.locator("#panel-items")).to_contain_text(f"… and {n - 500} more")
    expect(page.locator('#panel-items tr[data-item="100"]')).to_have_attribute(
        "data-state", "failed"
    )

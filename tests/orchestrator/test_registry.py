"""The versioned workflow registry: semver ordering (not string ordering), every registration
rule in every order, lookup by version and range, persistence through the store."""

from __future__ import annotations

import importlib
import itertools
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from dagengine import DAG, LuaExecutor, Node, PythonExecutor, SubWorkflow
from dagengine._semver import Version
from dagengine.exceptions import (
    CycleError,
    DagEngineError,
    DependentsConflict,
    NoMatchingVersion,
    SpecError,
    VersionConflict,
    VersionNotFound,
    WorkflowNotFound,
)
from dagengine.orchestrator.registry import Dependent, WorkflowRegistry
from dagengine.orchestrator.store import Store
from hypothesis import given, settings
from hypothesis import strategies as st


def leaf(tag: str = "x") -> DAG:
    """A one-node workflow; ``tag`` changes its spec."""
    dag = DAG()
    dag.add_node(Node("a", [], LuaExecutor(f"return {{tag = {tag!r}}}")))
    return dag


def parent(child: str, version_range: str) -> DAG:
    dag = DAG()
    dag.add_node(Node("prep", []))
    dag.add_node(Node("call", ["prep"], SubWorkflow(child, version_range)))
    return dag


# --- semver ordering ---------------------------------------------------------------------------


def test_1_10_beats_1_9_unlike_string_comparison() -> None:
    reg = WorkflowRegistry()
    reg.register("wf", "1.9.0", leaf())
    reg.register("wf", "1.10.0", leaf())  # "1.10.0" < "1.9.0" as strings: must be accepted
    assert str(reg.get("wf").version) == "1.10.0"
    assert str(reg.resolve("wf", "^1").version) == "1.10.0"
    assert [str(v.version) for v in reg.versions("wf")] == ["1.9.0", "1.10.0"]
    with pytest.raises(VersionConflict, match=r"1\.10\.0"):
        reg.register("wf", "1.9.5", leaf())


def test_latest_prefers_releases_over_higher_prereleases() -> None:
    reg = WorkflowRegistry()
    reg.register("wf", "1.0.0-alpha", leaf())
    reg.register("wf", "1.0.0-alpha.2", leaf())
    assert str(reg.get("wf").version) == "1.0.0-alpha.2"  # only pre-releases: the highest
    reg.register("wf", "1.0.0-beta", leaf())
    reg.register("wf", "1.0.0", leaf())
    reg.register("wf", "2.0.0-rc.1", leaf())
    assert str(reg.get("wf").version) == "1.0.0"  # a release beats a higher pre-release
    assert str(reg.resolve("wf", "*").version) == "1.0.0"
    assert str(reg.resolve("wf", ">=2.0.0-rc.0").version) == "2.0.0-rc.1"
    with pytest.raises(VersionConflict):
        reg.register("wf", "1.0.0-rc.1", leaf())  # below 1.0.0 in its major line
    assert reg.list_workflows()[0].versions == (
        "1.0.0-alpha",
        "1.0.0-alpha.2",
        "1.0.0-beta",
        "1.0.0",
        "2.0.0-rc.1",
    )


# --- registration rules ------------------------------------------------------------------------


def test_each_version_runnable_by_exact_version() -> None:
    reg = WorkflowRegistry()
    for i, version in enumerate(["1.0.0", "1.1.0", "2.0.0"]):
        reg.register("wf", version, leaf(str(i)), metadata={"n": i})
    for i, version in enumerate(["1.0.0", "1.1.0", "2.0.0"]):
        got = reg.get("wf", version)
        assert got.dag is not None
        assert got.runnable
        assert got.metadata == {"n": i}
        assert got.dag.version == version
    assert reg.get("wf", "1.1.0+build.7").version == Version.parse("1.1.0")


def test_older_or_equal_in_major_line_refused_naming_latest() -> None:
    reg = WorkflowRegistry()
    reg.register("wf", "1.5.0", leaf())
    with pytest.raises(VersionConflict) as info:
        reg.register("wf", "1.4.9", leaf())
    err = info.value
    assert (err.workflow_id, err.version, err.latest) == ("wf", "1.4.9", "1.5.0")
    assert "1.5.0" in str(err)
    assert "'wf'" in str(err)
    with pytest.raises(VersionConflict, match="different definition"):
        reg.register("wf", "1.5.0", leaf("other"))
    # Other major lines are independent: 2.x first, then an older line is still fine.
    reg.register("wf", "3.0.0", leaf())
    reg.register("wf", "2.0.0", leaf())
    reg.register("wf", "1.6.0", leaf())
    assert str(reg.get("wf").version) == "3.0.0"


def test_same_version_same_spec_is_a_no_op() -> None:
    reg = WorkflowRegistry()
    first = reg.register("wf", "1.0.0", leaf())
    assert reg.register("wf", "1.0.0", leaf()) is first
    updated = reg.register("wf", "1.0.0", leaf(), metadata={"note": "x"})
    assert updated.metadata == {"note": "x"}
    assert updated.registered_at == first.registered_at


def test_new_major_refused_while_dependents_use_a_range_it_leaves() -> None:
    reg = WorkflowRegistry()
    reg.register("child", "1.0.0", leaf())
    reg.register("p", "1.0.0", parent("child", "^1"))
    reg.register("q", "1.0.0", parent("child", ">=1.0.0"))  # accepts 2.0.0: not blocking
    reg.register("child", "1.1.0", leaf())  # minor: allowed
    reg.register("child", "1.1.1", leaf())  # patch: allowed
    with pytest.raises(DependentsConflict) as info:
        reg.register("child", "2.0.0", leaf())
    err = info.value
    assert isinstance(err, VersionConflict)
    assert err.dependents == [("p", "1.0.0", "^1")]
    assert "p@1.0.0" in str(err)
    assert "child@^1" in str(err)
    assert "2.0.0" in str(err)
    assert [str(v.version) for v in reg.versions("child")] == ["1.0.0", "1.1.0", "1.1.1"]
    # The dependent moves on; its old version keeps resolving to 1.x and does not block.
    reg.register("p", "1.1.0", parent("child", ">=1.0.0 <3"))
    reg.register("child", "2.0.0", leaf())
    assert str(reg.resolve("child", "^1").version) == "1.1.1"
    assert reg.dependents("child") == [
        Dependent("p", "1.1.0", ">=1.0.0 <3"),
        Dependent("q", "1.0.0", ">=1.0.0"),
    ]
    assert Dependent("p", "1.0.0", "^1") in reg.dependents("child", all_versions=True)


def test_unserved_ranges_and_self_references_do_not_block() -> None:
    reg = WorkflowRegistry()
    reg.register("child", "1.0.0", leaf())
    reg.register("p", "1.0.0", parent("child", "^5"))  # matches nothing: nothing to leave
    reg.register("child", "1.0.1", parent("child", "^1"))  # calls itself
    reg.register("child", "2.0.0", leaf())
    assert str(reg.get("child").version) == "2.0.0"


def test_parent_registered_before_child_exists() -> None:
    reg = WorkflowRegistry()
    reg.register("p", "1.0.0", parent("child", "^1"))
    assert reg.dependents("child") == [Dependent("p", "1.0.0", "^1")]
    reg.register("child", "1.0.0", leaf())  # the first version is never "leaving"
    with pytest.raises(DependentsConflict):
        reg.register("child", "2.0.0", leaf())


# Registration in every order: W@1.0.0, W@1.1.0, W@2.0.0 and P@1.0.0 (uses W@^1).
_STEPS = [("W", "1.0.0"), ("W", "1.1.0"), ("W", "2.0.0"), ("P", "1.0.0")]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_rules_hold_in_every_registration_order(order: tuple[int, ...]) -> None:
    reg = WorkflowRegistry()
    accepted: list[tuple[str, str]] = []
    for index in order:
        workflow_id, version = _STEPS[index]
        before = set(accepted)
        builder = parent("W", "^1") if workflow_id == "P" else leaf()
        # The oracle, written from the rules rather than from the code:
        if (workflow_id, version) == ("W", "1.0.0"):
            expected: type[DagEngineError] | None = (
                VersionConflict if ("W", "1.1.0") in before else None
            )
        elif (workflow_id, version) == ("W", "2.0.0"):
            leaves_dependent = ("P", "1.0.0") in before and any(
                w == "W" and v.startswith("1.") for w, v in before
            )
            expected = DependentsConflict if leaves_dependent else None
        else:
            expected = None
        if expected is None:
            reg.register(workflow_id, version, builder)
            accepted.append((workflow_id, version))
        else:
            with pytest.raises(expected):
                reg.register(workflow_id, version, builder)
    # Whatever the order, P is tracked as W's dependent and ^1 resolves to the best 1.x.
    assert reg.dependents("W") == [Dependent("P", "1.0.0", "^1")]
    assert str(reg.resolve("W", "^1").version) == "1.1.0"
    assert {str(v.version) for v in reg.versions("W")} == {v for w, v in accepted if w == "W"}


# --- builders and validation --------------------------------------------------------------------


def test_builder_forms() -> None:
    reg = WorkflowRegistry()
    calls: list[int] = []

    def build() -> DAG:
        calls.append(1)
        return leaf()

    reg.register("a", "1.0.0", build)
    assert calls == [1]  # called once, at registration
    spec = {"nodes": [{"id": "n", "lua": "return {}"}]}
    got = reg.register("b", "1.0.0", spec)
    assert got.spec is not None
    assert got.spec["id"] == "b"
    assert got.spec["version"] == "1.0.0"
    reg.register(
        "c", "1.0.0", lambda: {"id": "c", "version": "1.0.0", "nodes": [{"id": "n", "noop": True}]}
    )
    with pytest.raises(TypeError, match="builder must be"):
        reg.register("d", "1.0.0", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got int"):
        reg.register("d", "1.0.0", lambda: 42)  # type: ignore[arg-type, return-value]


def test_dag_id_and_version_must_match() -> None:
    reg = WorkflowRegistry()
    with pytest.raises(SpecError, match="own id is 'other'"):
        reg.register("wf", "1.0.0", DAG("other"))
    with pytest.raises(SpecError, match=r"DAG says version 2\.0\.0"):
        reg.register("wf", "1.0.0", DAG("wf", "2.0.0"))
    with pytest.raises(SpecError, match="version"):
        reg.register("wf", "1.0", leaf())
    with pytest.raises(SpecError, match="invalid workflow id"):
        reg.register("bad id!", "1.0.0", leaf())
    dag = DAG("wf", "1.0.0")
    dag.add_node(Node("a"))
    assert reg.register("wf", "1.0.0", dag).dag is dag


def test_invalid_dag_is_refused_and_not_registered() -> None:
    reg = WorkflowRegistry()
    dag = DAG()
    dag.add_node(Node("a", ["b"]))
    dag.add_node(Node("b", ["a"]))
    with pytest.raises(CycleError):
        reg.register("wf", "1.0.0", dag)
    assert "wf" not in reg
    assert reg.list_workflows() == []


# --- lookup ------------------------------------------------------------------------------------


def test_lookup_errors_name_workflow_and_versions() -> None:
    reg = WorkflowRegistry()
    with pytest.raises(WorkflowNotFound, match="'ghost'") as missing:
        reg.get("ghost")
    assert missing.value.workflow_id == "ghost"
    reg.register("wf", "1.0.0", leaf())
    reg.register("wf", "1.2.0", leaf())
    with pytest.raises(VersionNotFound, match=r"1\.0\.0, 1\.2\.0") as no_version:
        reg.get("wf", "1.1.0")
    assert no_version.value.available == ["1.0.0", "1.2.0"]
    with pytest.raises(VersionNotFound):
        reg.get("wf", "not-a-version")
    with pytest.raises(NoMatchingVersion, match=r"'\^2'.*1\.0\.0, 1\.2\.0") as no_match:
        reg.resolve("wf", "^2")
    assert (no_match.value.version_range, no_match.value.available) == ("^2", ["1.0.0", "1.2.0"])
    with pytest.raises(WorkflowNotFound):
        reg.resolve("ghost", "*")
    with pytest.raises(SpecError, match="invalid version range"):
        reg.resolve("wf", ">>1")


@pytest.mark.parametrize(
    ("rng", "expected"),
    [
        ("^1.4", "1.10.2"),
        ("~1.4.2", "1.4.9"),
        (">=1.2,<2", "1.10.2"),
        ("1.2.3", "1.2.3"),
        ("*", "2.1.0"),
        ("^0.3", "0.3.1"),
        ("<1.4", "1.2.3"),
    ],
)
def test_resolve_picks_the_highest_match(rng: str, expected: str) -> None:
    reg = WorkflowRegistry()
    for version in ["0.3.1", "1.2.3", "1.4.2", "1.4.9", "1.9.0", "1.10.2", "2.1.0", "3.0.0-rc.1"]:
        reg.register("wf", version, leaf())
    assert str(reg.resolve("wf", rng).version) == expected


def test_list_workflows() -> None:
    reg = WorkflowRegistry()
    reg.register("b", "1.0.0", leaf(), metadata={"owner": "old"})
    reg.register("b", "1.1.0", leaf(), metadata={"owner": "new"})
    reg.register("a", "0.1.0", leaf())
    infos = reg.list_workflows()
    assert [(i.workflow_id, i.versions, i.latest) for i in infos] == [
        ("a", ("0.1.0",), "0.1.0"),
        ("b", ("1.0.0", "1.1.0"), "1.1.0"),
    ]
    assert infos[1].metadata == {"owner": "new"}


_VERSION = st.tuples(st.integers(0, 3), st.integers(0, 12), st.integers(0, 12))


def _brute_force(rng: tuple[str, tuple[int, int, int], tuple[int, int, int]], v: Any) -> bool:
    """Range semantics restated on plain tuples, independent of _semver."""
    kind, a, b = rng
    if kind == "*":
        return True
    if kind == "exact":
        return bool(v == a)
    if kind == "between":
        return bool(a <= v < b)
    if kind == "~":
        return bool(v[:2] == a[:2] and v[2] >= a[2])
    # caret: fixed up to the left-most non-zero component
    if a[0] > 0:
        return bool(v[0] == a[0] and v >= a)
    if a[1] > 0:
        return bool(v[:2] == a[:2] and v[2] >= a[2])
    return bool(v == a)


def _text(rng: tuple[str, tuple[int, int, int], tuple[int, int, int]]) -> str:
    kind, a, b = rng
    dotted = ".".join(map(str, a))
    return {
        "*": "*",
        "exact": dotted,
        "between": f">={dotted},<{'.'.join(map(str, b))}",
        "~": f"~{dotted}",
        "^": f"^{dotted}",
    }[kind]


@settings(max_examples=60, deadline=None)
@given(
    versions=st.sets(_VERSION, min_size=1, max_size=12),
    rng=st.tuples(st.sampled_from(["*", "exact", "between", "~", "^"]), _VERSION, _VERSION),
)
def test_resolve_agrees_with_brute_force(
    versions: set[tuple[int, int, int]],
    rng: tuple[str, tuple[int, int, int], tuple[int, int, int]],
) -> None:
    reg = WorkflowRegistry()
    dag_spec = {"nodes": [{"id": "n", "noop": True}]}
    for version in sorted(versions):  # ascending: every registration is allowed
        reg.register("wf", ".".join(map(str, version)), dict(dag_spec))
    matching = [v for v in versions if _brute_force(rng, v)]
    if not matching:
        with pytest.raises(NoMatchingVersion):
            reg.resolve("wf", _text(rng))
    else:
        got = reg.resolve("wf", _text(rng)).version
        assert (got.major, got.minor, got.patch) == max(matching)


# --- persistence ------------------------------------------------------------------------------


def test_round_trip_through_the_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store(path) as store:
        reg = WorkflowRegistry(store)
        reg.register("child", "1.0.0", leaf("one"), metadata={"team": "data"})
        reg.register("child", "1.10.0", leaf("ten"))
        reg.register("p", "1.0.0", parent("child", "^1"))
    with Store(path) as store:
        again = WorkflowRegistry(store)
        assert [(i.workflow_id, i.versions) for i in again.list_workflows()] == [
            ("child", ("1.0.0", "1.10.0")),
            ("p", ("1.0.0",)),
        ]
        child = again.get("child", "1.0.0")
        assert child.runnable
        assert child.metadata == {"team": "data"}
        assert child.dag is not None
        assert child.dag.run().outputs == {"a": {"tag": "one"}}
        assert again.dependents("child") == [Dependent("p", "1.0.0", "^1")]
        # The rules see the persisted versions: still refused after a restart.
        with pytest.raises(DependentsConflict):
            again.register("child", "2.0.0", leaf())
        with pytest.raises(VersionConflict):
            again.register("child", "1.9.0", leaf())
        # A program re-registering its workflows at start-up is fine.
        again.register("child", "1.10.0", leaf("ten"))
        assert again.unavailable() == []


def test_unresolvable_import_paths_are_listed_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "mods" / "gone_tasks.py"
    module.parent.mkdir()
    module.write_text("def work(ctx):\n    return {'ok': True}\n")
    monkeypatch.syspath_prepend(str(module.parent))
    spec = {"nodes": [{"id": "n", "python": "gone_tasks:work"}]}
    path = tmp_path / "state.db"
    with Store(path) as store:
        WorkflowRegistry(store).register("wf", "1.0.0", spec)
        WorkflowRegistry(store).register("other", "1.0.0", leaf())
    module.unlink()
    sys.modules.pop("gone_tasks", None)
    importlib.invalidate_caches()
    with Store(path) as store:
        reg = WorkflowRegistry(store)
        [broken] = reg.unavailable()
        assert str(broken) == "wf@1.0.0"
        assert not broken.runnable
        assert broken.problem is not None
        assert "gone_tasks" in broken.problem
        assert reg.get("other").runnable
        assert [i.workflow_id for i in reg.list_workflows()] == ["other", "wf"]


def test_closure_dags_register_and_are_adopted_after_restart(tmp_path: Path) -> None:
    def build() -> DAG:
        dag = DAG()
        dag.add_node(Node("a", [], PythonExecutor(lambda ctx: {"v": 1})))
        return dag

    path = tmp_path / "state.db"
    with Store(path) as store:
        reg = WorkflowRegistry(store)
        first = reg.register("wf", "1.0.0", build)
        assert first.runnable
        assert first.spec is None
        with pytest.raises(VersionConflict):
            reg.register("wf", "1.0.0", build)  # cannot tell if it is the same: refused
    with Store(path) as store:
        reg = WorkflowRegistry(store)
        assert [str(v) for v in reg.unavailable()] == ["wf@1.0.0"]
        adopted = reg.register("wf", "1.0.0", build)
        assert adopted.runnable
        assert reg.unavailable() == []
        assert adopted.dag is not None
        assert adopted.dag.run().outputs == {"a": {"v": 1}}


def test_concurrent_registration() -> None:
    reg = WorkflowRegistry()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for minor in range(20):
                reg.register(f"wf{worker}", f"1.{minor}.0", leaf())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(len(info.versions) == 20 for info in reg.list_workflows())

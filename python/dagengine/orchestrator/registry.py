"""Versioned workflows: registration rules, lookup by exact version or semver range, and the
dependents tracked through sub-workflow nodes.

Rules (true semver, :mod:`dagengine._semver`: 1.10.0 > 1.9.0, pre-releases before releases):

- A workflow has many versions; each stays runnable by its exact version.
- The *latest* version is the highest release, or the highest pre-release when there is no
  release yet; it is what runs when no version is asked for.
- A version must be newer than every version of its own major line (``1.4.0`` after ``1.5.0``
  is refused; ``1.6.0`` or ``3.0.0`` is fine).
- A *new major version* -- one above every major line there is -- is refused while a workflow
  that depends on this one (its latest version has ``SubWorkflow(this, range)``) uses a range
  that matches an existing version but not the new one: the dependent would be left behind.
  Only each dependent's latest version counts, since older versions keep resolving to the old
  versions they were written for (old versions are never removed). Minor and patch updates
  are always allowed.
- Dependents are derived from the registered versions whenever a rule is checked, so the order
  of registration does not matter: a parent may be registered before its child exists.
- Registering an existing version again with the same spec is a no-op (so a program that
  registers its workflows at start-up can restart on the same store); with a different spec it
  is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from dagengine._semver import Version, VersionRange
from dagengine.exceptions import (
    DagEngineError,
    DependentsConflict,
    NoMatchingVersion,
    SpecError,
    VersionConflict,
    VersionNotFound,
    WorkflowNotFound,
)
from dagengine.orchestrator.store import StoreBackend
from dagengine.spec import parse_workflow
from dagengine.spec_model import WORKFLOW_ID
from dagengine.workflow import DAG, SubWorkflow

__all__ = ["Dependent", "WorkflowBuilder", "WorkflowInfo", "WorkflowRegistry", "WorkflowVersion"]

_log = logging.getLogger(__name__)

#: What :meth:`WorkflowRegistry.register` accepts: a DAG, a spec, or a callable returning one.
WorkflowBuilder: TypeAlias = "DAG | Mapping[str, Any] | Callable[[], DAG | Mapping[str, Any]]"


@dataclass(frozen=True, slots=True)
class WorkflowVersion:
    """One registered version of a workflow.

    ``dag`` is ``None`` when a version loaded from the store cannot be rebuilt (its Python
    import paths no longer resolve, or it was registered in-process without a portable spec);
    ``problem`` then says why, and registering the version again makes it runnable.
    """

    workflow_id: str
    version: Version
    dag: DAG | None
    spec: dict[str, Any] | None
    metadata: dict[str, Any]
    #: ``(workflow_id, version_range)`` of each sub-workflow node, in node order.
    dependencies: tuple[tuple[str, str], ...]
    registered_at: float = 0.0
    problem: str | None = None

    @property
    def runnable(self) -> bool:
        """True when the DAG is available to run."""
        return self.dag is not None

    def __str__(self) -> str:
        return f"{self.workflow_id}@{self.version}"


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """A summary of a registered workflow: its versions (ascending), the latest one and the
    latest one's metadata."""

    workflow_id: str
    versions: tuple[str, ...]
    latest: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, order=True)
class Dependent:
    """Version ``version`` of ``workflow_id`` runs a sub-workflow within ``version_range``."""

    workflow_id: str
    version: str
    version_range: str


def _dependencies(dag: DAG) -> tuple[tuple[str, str], ...]:
    seen: dict[tuple[str, str], None] = {}
    for node in dag:
        if isinstance(node.executor, SubWorkflow):
            seen[(node.executor.workflow_id, node.executor.version_range)] = None
    return tuple(seen)


def _latest(
    versions: Mapping[Version, WorkflowVersion], yanked: frozenset[Version] = frozenset()
) -> Version:
    """The highest release (else pre-release) not in ``yanked`` (all yanked: of them all)."""
    kept = ([v for v in versions if v not in yanked] if yanked else None) or list(versions)
    releases = [v for v in kept if not v.is_prerelease]
    return max(releases or kept)


def _is_exact(rng: VersionRange, version: Version) -> bool:
    """Whether ``rng`` names exactly ``version`` (``1.2.0`` or ``=1.2.0``)."""
    return rng.text.strip().lstrip("=").strip() == str(version)


#: The store's key-value entry (``set_trigger_state``) that persists yanked versions.
YANKED_KEY = "dagengine.registry.yanked"


def _listing(versions: Mapping[Version, WorkflowVersion]) -> list[str]:
    return [str(v) for v in sorted(versions)]


class WorkflowRegistry:
    """The registered workflow versions, optionally persisted in a store (a
    :class:`~dagengine.orchestrator.store.StoreBackend`, loaded from it on construction).
    Thread-safe."""

    def __init__(self, store: StoreBackend | None = None) -> None:
        self._store = store
        #: Other orchestrators register versions in the same store (replicas): see :meth:`get`.
        self.shared = False
        self._lock = threading.RLock()
        self._workflows: dict[str, dict[Version, WorkflowVersion]] = {}
        self._yanked: dict[str, set[Version]] = {}
        if store is not None:
            self._load(store)
            self.refresh_yanked()

    def refresh_yanked(self) -> None:
        """Read the yanked marks from the store again (replicas: another one may have
        changed them)."""
        if self._store is None:
            return
        state = self._store.get_trigger_state(YANKED_KEY) or {}
        marks = {wid: {Version.parse(t) for t in texts} for wid, texts in dict(state).items()}
        with self._lock:
            self._yanked = marks

    def _yanked_of(self, workflow_id: str) -> frozenset[Version]:
        return frozenset(self._yanked.get(workflow_id, ()))

    def yanked(self, workflow_id: str) -> list[str]:
        """The yanked versions of a workflow, ascending."""
        with self._lock:
            return [str(v) for v in sorted(self._yanked_of(workflow_id))]

    def yank(self, workflow_id: str, version: str, yanked: bool = True) -> WorkflowVersion:
        """Mark a version yanked (``yanked=False``: restore it). A yanked version is skipped
        when a range is resolved and when the latest version is chosen (yanking the latest
        rolls the latest back to the highest version left); asked for by its exact number it
        still runs. Persisted in the store. :class:`VersionNotFound` for an unknown version."""
        with self._lock:
            entry = self.get(workflow_id, version)
            marks = self._yanked.setdefault(workflow_id, set())
            if yanked:
                marks.add(entry.version)
            else:
                marks.discard(entry.version)
            if self._store is not None:
                self._store.set_trigger_state(
                    YANKED_KEY,
                    {wid: sorted(str(v) for v in vs) for wid, vs in self._yanked.items() if vs},
                )
            return entry

    def refresh(self) -> int:
        """Load the versions the store has and this registry does not (registered by
        another orchestrator on the same store: a replica); returns how many."""
        if self._store is None:
            return 0
        with self._lock:
            before = sum(len(v) for v in self._workflows.values())
            self._load(self._store, only_new=True)
            return sum(len(v) for v in self._workflows.values()) - before

    def _load(self, store: StoreBackend, *, only_new: bool = False) -> None:
        for record in store.workflow_versions():
            version = Version.parse(record.version)
            if only_new and version in self._workflows.get(record.workflow_id, {}):
                continue
            dag: DAG | None = None
            problem: str | None = None
            if record.spec is None:
                problem = (
                    "registered in-process from a DAG without a portable spec (Python "
                    "closures); register it again to run it"
                )
            else:
                try:
                    dag = parse_workflow(record.spec)
                except DagEngineError as exc:
                    problem = f"its stored spec no longer loads: {exc}"
            if problem is not None:
                _log.warning(
                    "workflow %s@%s is not runnable: %s", record.workflow_id, version, problem
                )
            self._workflows.setdefault(record.workflow_id, {})[version] = WorkflowVersion(
                record.workflow_id,
                version,
                dag,
                record.spec,
                dict(record.metadata),
                record.dependencies,
                record.registered_at,
                problem,
            )

    # -- registration --

    def register(
        self,
        workflow_id: str,
        version: str,
        builder: WorkflowBuilder,
        metadata: Mapping[str, Any] | None = None,
    ) -> WorkflowVersion:
        """Register ``version`` of ``workflow_id``. ``builder`` is a :class:`DAG`, a spec dict,
        or a callable returning either (called once, here). The DAG is validated now.

        A DAG without an id or version gets this registration's; one with its own must agree
        (``SpecError`` otherwise). Raises :class:`VersionConflict` or
        :class:`DependentsConflict` when a rule of the module docs refuses the version.
        """
        if not isinstance(workflow_id, str) or not WORKFLOW_ID.fullmatch(workflow_id):
            raise SpecError(
                f"invalid workflow id {workflow_id!r}: use letters, digits, '_', '-' and '.'",
                path="id",
            )
        try:
            parsed = Version.parse(version)
        except ValueError as exc:
            raise SpecError(f"workflow {workflow_id!r}: {exc}", path="version") from None
        # Build and validate outside the lock: a builder may be slow (imports, I/O).
        dag = self._build(workflow_id, parsed, builder)
        spec = self._portable_spec(dag)
        deps = _dependencies(dag)
        entry_metadata = dict(metadata or {})
        with self._lock:
            versions = self._workflows.get(workflow_id, {})
            existing = versions.get(parsed)
            if existing is not None:
                return self._reregister(existing, dag, spec, deps, entry_metadata)
            self._check_rules(workflow_id, parsed, versions)
            entry = WorkflowVersion(
                workflow_id, parsed, dag, spec, entry_metadata, deps, time.time()
            )
            if self._store is not None:
                self._store.save_workflow_version(
                    workflow_id, str(parsed), spec, entry_metadata, deps
                )
            self._workflows.setdefault(workflow_id, {})[parsed] = entry
            return entry

    def _build(self, workflow_id: str, version: Version, builder: WorkflowBuilder) -> DAG:
        built: object = builder
        if callable(builder) and not isinstance(builder, DAG):
            built = builder()
        if isinstance(built, DAG):
            dag = built
            if dag.id is None:
                dag.id = workflow_id
            if dag.version is None:
                dag.version = str(version)
        elif isinstance(built, Mapping):
            spec = dict(built)
            spec.setdefault("id", workflow_id)
            spec.setdefault("version", str(version))
            dag = parse_workflow(spec)
        else:
            raise TypeError(
                f"workflow {workflow_id!r}: the builder must be a DAG, a spec dict, or a "
                f"callable returning one; got {type(built).__name__}"
            )
        if dag.id != workflow_id:
            raise SpecError(
                f"workflow {workflow_id!r}: the DAG's own id is {dag.id!r}; register it under "
                "its own id or remove the id from the DAG",
                path="id",
            )
        if dag.version is not None and Version.parse(dag.version) != version:
            raise SpecError(
                f"workflow {workflow_id!r}: registered as version {version} but the DAG says "
                f"version {dag.version}",
                path="version",
            )
        dag.preprocess()
        return dag

    @staticmethod
    def _portable_spec(dag: DAG) -> dict[str, Any] | None:
        try:
            return dag.to_spec()
        except SpecError:
            # Closures and __main__ functions have no import path: the DAG runs in-process
            # but cannot be stored as a spec (or sent to a remote engine).
            return None

    def _reregister(
        self,
        existing: WorkflowVersion,
        dag: DAG,
        spec: dict[str, Any] | None,
        deps: tuple[tuple[str, str], ...],
        metadata: dict[str, Any],
    ) -> WorkflowVersion:
        same_spec = spec is not None and spec == existing.spec
        adoptable = existing.dag is None and (existing.spec is None or spec is None or same_spec)
        if not same_spec and not adoptable:
            raise VersionConflict(
                f"workflow {existing.workflow_id!r} version {existing.version} is already "
                "registered with a different definition; register a new version instead",
                workflow_id=existing.workflow_id,
                version=str(existing.version),
                latest=str(_latest(self._workflows[existing.workflow_id])),
            )
        if same_spec and existing.dag is not None and metadata == existing.metadata:
            return existing
        entry = WorkflowVersion(
            existing.workflow_id,
            existing.version,
            existing.dag if existing.dag is not None else dag,
            spec if spec is not None else existing.spec,
            metadata,
            deps,
            existing.registered_at,
        )
        if self._store is not None:
            self._store.save_workflow_version(
                entry.workflow_id, str(entry.version), entry.spec, metadata, deps
            )
        self._workflows[entry.workflow_id][entry.version] = entry
        return entry

    def _check_rules(
        self, workflow_id: str, version: Version, versions: Mapping[Version, WorkflowVersion]
    ) -> None:
        if not versions:
            return
        same_line = [v for v in versions if v.major == version.major]
        if same_line and version < max(same_line):
            newest = max(same_line)
            raise VersionConflict(
                f"workflow {workflow_id!r}: version {version} is not newer than {newest}, the "
                f"latest of its major line {version.major}.x; register a version above {newest}",
                workflow_id=workflow_id,
                version=str(version),
                latest=str(newest),
            )
        if version.major <= max(v.major for v in versions):
            return  # a minor or patch update (or an older major line): always allowed
        blocking = [
            dep
            for dep in self._current_dependents(workflow_id)
            if self._would_leave(dep.version_range, versions, version)
        ]
        if blocking:
            listed = ", ".join(
                f"{d.workflow_id}@{d.version} (uses {workflow_id}@{d.version_range})"
                for d in blocking
            )
            raise DependentsConflict(
                f"workflow {workflow_id!r}: new major version {version} would leave the range "
                f"its dependents use: {listed}; register new versions of them that accept "
                f"{version} first",
                workflow_id=workflow_id,
                version=str(version),
                latest=str(_latest(versions)),
                dependents=[(d.workflow_id, d.version, d.version_range) for d in blocking],
            )

    @staticmethod
    def _would_leave(
        version_range: str, versions: Mapping[Version, WorkflowVersion], new: Version
    ) -> bool:
        rng = VersionRange.parse(version_range)
        return not rng.matches(new) and any(rng.matches(v) for v in versions)

    # -- lookup --

    def _versions_of(self, workflow_id: str) -> dict[Version, WorkflowVersion]:
        versions = self._workflows.get(workflow_id)
        if not versions:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise WorkflowNotFound(
                f"no workflow {workflow_id!r} is registered (registered: {known})",
                workflow_id=workflow_id,
            )
        return versions

    def get(self, workflow_id: str, version: str | None = None) -> WorkflowVersion:
        """A version by its exact number, or the latest when ``version`` is ``None``. With
        :attr:`shared` (replicas on one store), a version this registry does not know is
        looked for in the store before it is refused."""
        try:
            return self._get(workflow_id, version)
        except (WorkflowNotFound, VersionNotFound):
            if not self.shared or not self.refresh():
                raise
        return self._get(workflow_id, version)

    def _get(self, workflow_id: str, version: str | None) -> WorkflowVersion:
        with self._lock:
            versions = self._versions_of(workflow_id)
            if version is None:
                return versions[_latest(versions, self._yanked_of(workflow_id))]
            try:
                wanted = Version.parse(version)
            except ValueError:
                wanted = None
            if wanted is None or wanted not in versions:
                raise VersionNotFound(
                    f"workflow {workflow_id!r} has no version {version!r} (versions: "
                    f"{', '.join(_listing(versions))})",
                    workflow_id=workflow_id,
                    version=version,
                    available=_listing(versions),
                )
            return versions[wanted]

    def reload(self, workflow_id: str, version: str) -> WorkflowVersion:
        """Try again to build a stored version that could not be built when it was loaded
        (its import paths did not resolve then: a module folder not yet on ``sys.path``).
        Returns the entry, runnable if it now builds; :class:`VersionNotFound` if there is
        no such version."""
        entry = self.get(workflow_id, version)
        if entry.dag is not None or entry.spec is None:
            return entry
        try:
            dag = parse_workflow(entry.spec)
        except DagEngineError as exc:
            problem = f"its stored spec no longer loads: {exc}"
            if problem == entry.problem:
                return entry
            entry = dataclasses.replace(entry, problem=problem)
        else:
            entry = dataclasses.replace(entry, dag=dag, problem=None)
        with self._lock:
            current = self._workflows[workflow_id][entry.version]
            if current.dag is not None:
                return current  # registered again meanwhile
            self._workflows[workflow_id][entry.version] = entry
        return entry

    def resolve(self, workflow_id: str, version_range: str) -> WorkflowVersion:
        """The highest version matching an npm-style range (``^1.4``, ``~1.4.2``,
        ``>=1.2,<2``, ``1.2.3``, ``*``)."""
        try:
            rng = VersionRange.parse(version_range)
        except ValueError as exc:
            raise SpecError(f"workflow {workflow_id!r}: {exc}", path="workflow") from None
        with self._lock:
            versions = self._versions_of(workflow_id)
            yanked = self._yanked_of(workflow_id)
            # A yanked version is skipped by ranges; named exactly ("1.2.0") it still runs.
            best = rng.best(v for v in versions if v not in yanked or _is_exact(rng, v))
            if best is None:
                raise NoMatchingVersion(
                    f"no version of workflow {workflow_id!r} matches {version_range!r} "
                    f"(versions: {', '.join(_listing(versions))})",
                    workflow_id=workflow_id,
                    version_range=version_range,
                    available=_listing(versions),
                )
            return versions[best]

    def resolve_children(self, wv: WorkflowVersion) -> dict[str, str]:
        """The versions ``wv``'s sub-workflow ranges resolve to now (recorded on a run):
        ``{"child@^1.0": "1.2.0"}``."""
        return {
            f"{child_id}@{version_range}": str(self.resolve(child_id, version_range).version)
            for child_id, version_range in wv.dependencies
        }

    def versions(self, workflow_id: str) -> list[WorkflowVersion]:
        """Every version of a workflow, ascending."""
        with self._lock:
            versions = self._versions_of(workflow_id)
            return [versions[v] for v in sorted(versions)]

    def __contains__(self, workflow_id: object) -> bool:
        with self._lock:
            return workflow_id in self._workflows

    def list_workflows(self) -> list[WorkflowInfo]:
        """A summary of every workflow, by id."""
        with self._lock:
            infos = []
            for workflow_id in sorted(self._workflows):
                versions = self._workflows[workflow_id]
                latest = _latest(versions, self._yanked_of(workflow_id))
                infos.append(
                    WorkflowInfo(
                        workflow_id,
                        tuple(_listing(versions)),
                        str(latest),
                        dict(versions[latest].metadata),
                    )
                )
            return infos

    def unavailable(self) -> list[WorkflowVersion]:
        """Versions loaded from the store that cannot run (see ``WorkflowVersion.problem``)."""
        with self._lock:
            return [
                entry
                for workflow_id in sorted(self._workflows)
                for _, entry in sorted(self._workflows[workflow_id].items())
                if entry.dag is None
            ]

    def _current_dependents(self, workflow_id: str) -> list[Dependent]:
        found = []
        for other, versions in self._workflows.items():
            if other == workflow_id:
                continue  # a workflow calling itself is limited by the depth limit instead
            latest = versions[_latest(versions)]
            for child, rng in latest.dependencies:
                if child == workflow_id:
                    found.append(Dependent(other, str(latest.version), rng))
        return sorted(found)

    def dependents(self, workflow_id: str, *, all_versions: bool = False) -> list[Dependent]:
        """Workflows whose latest version (every version with ``all_versions=True``) has a
        sub-workflow node on ``workflow_id``. The workflow need not be registered."""
        with self._lock:
            if not all_versions:
                return self._current_dependents(workflow_id)
            return sorted(
                Dependent(other, str(entry.version), rng)
                for other, versions in self._workflows.items()
                for entry in versions.values()
                for child, rng in entry.dependencies
                if child == workflow_id and other != workflow_id
            )

"""``dagengine serve``: an orchestrator with its engines, workflows, triggers and HTTP API.

Configuration comes from, in order of precedence: command-line flags, the YAML file given
with ``--config``, the original system's environment variables (:meth:`Config.from_env`), and
defaults. The file (every key optional)::

    http:
      host: 127.0.0.1          # default 127.0.0.1
      port: 8080               # default DAGENGINE_HTTP_PORT or 8080; 0 picks a free port
      max_body_bytes: 1048576  # request bodies past this get 413
      token_env: API_TOKEN     # bearer token for the REST routes (or token: ...)
      allow_python_specs: false  # let POST /workflows register specs with python: nodes
    store: ./dagengine.db      # SQLite file, :memory: or postgresql://... (DAGENGINE_STORE)
    replica: false             # one of several active orchestrators on one PostgreSQL store
                               # (DAGENGINE_REPLICA=1, --replica; docs/deploy.md)
    workflows: [examples]      # folders to load (see load_workflows)
    engines: 0                 # local engine processes; 0 = the embedded in-process engine
    engine_capacity: 10        # runs at once on each of them (or on the embedded engine)
    discovery:                 # remote engines instead (type: static | kubernetes |
      type: static             #   self-registration; or the DISCOVERY/ENGINES variables)
      engines: [10.0.0.5:50051]
    grpc_port: 50051           # OrchestratorService, with discovery; it listens on http.host
                               # unless DAGENGINE_GRPC_HOST says (TLS, token: docs/orchestrator.md)
    triggers:
      - {type: cron, id: nightly, workflow_id: etl, schedule: "0 2 * * *",
         timezone: Europe/Berlin, overlap: skip, catchup: latest, catchup_window: 1h,
         inputs: {mode: full}}
      - {type: http, id: build-hook, path: /hooks/build, workflow_id: build, mode: async,
         auth: hmac, secret_env: HOOK_SECRET, max_body_bytes: 65536}
      # auth: none | bearer | hmac | hmac-timestamp (signed time, replays refused;
      # tolerance: 5m by default) -- see dagengine.triggers.http
    retention:                 # finished runs kept (or: retention: 7d); docs/serve.md
      max_age: 30d             # default DAGENGINE_RETENTION or 30d; off keeps them forever
      keep_last: 100           # per workflow, the newest finished runs kept whatever their age
      export_dir: ./archive    # JSON Lines of each run before it is deleted
      interval: 10m            # between two passes of the background pruner

On SIGTERM or Ctrl-C: triggers stop, the HTTP server finishes the requests in flight (up to
5 s), the orchestrator stops (queued and running runs stay in the store and resume at the
next start on it), local engine processes are drained and stopped; exit 0.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, TextIO

import yaml

from dagengine._units import parse_duration
from dagengine.api.hooks import check_path
from dagengine.engine import PARENT_PID_ENV
from dagengine.exceptions import ConfigError, DagEngineError, SpecError, TriggerError
from dagengine.logconfig import EventLogger
from dagengine.orchestrator.config import DISCOVERY_TYPES, Config
from dagengine.orchestrator.store.postgres import is_postgres_url
from dagengine.tracing import attach_tracing
from dagengine.triggers import CronTrigger, HTTPTrigger, Trigger
from dagengine.triggers.http import DEFAULT_MAX_BODY_BYTES

__all__ = ["ServeOptions", "build_triggers", "load_serve_config", "load_workflows", "serve"]

log = logging.getLogger("dagengine.serve")

_TOP_KEYS = ("http", "store", "replica", "workflows", "engines", "engine_capacity",
             "discovery", "grpc_port", "triggers", "retention")  # fmt: skip
_RETENTION_KEYS = ("max_age", "keep_last", "export_dir", "interval")
_HTTP_KEYS = ("host", "port", "max_body_bytes", "token", "token_env", "allow_python_specs")
_CRON_KEYS = ("type", "id", "workflow_id", "version", "schedule", "timezone", "overlap",
              "catchup", "catchup_window", "inputs")  # fmt: skip
_HTTP_TRIGGER_KEYS = ("type", "id", "workflow_id", "version", "path", "mode", "auth", "secret",
                      "secret_env", "tolerance", "max_body_bytes", "sync_timeout",
                      "inputs")  # fmt: skip
_SPEC_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ServeOptions:
    """Everything ``serve`` needs; :func:`load_serve_config` fills it from a file."""

    host: str = "127.0.0.1"
    port: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    api_token: str | None = None
    allow_python_specs: bool = False
    store: str | None = None
    #: One of several active orchestrators on one PostgreSQL store (``None``: as
    #: ``DAGENGINE_REPLICA`` says).
    replica: bool | None = None
    workflows: list[str] = field(default_factory=list)
    engines: int = 0
    engine_capacity: int = 10
    discovery: dict[str, Any] = field(default_factory=dict)
    grpc_port: int | None = None
    triggers: list[dict[str, Any]] = field(default_factory=list)
    #: ``Config`` fields from ``retention:`` (``retention``, ``keep_last``, ``export_dir``,
    #: ``prune_interval``).
    retention: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)


def _bad(where: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {problem}", variable=where, value="")


def _check_keys(where: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _bad(
            where, f"unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(allowed)})"
        )


def _secret(where: str, data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    env = data.get(f"{key}_env")
    if env is not None:
        value = os.environ.get(str(env))
        if not value:
            raise _bad(where, f"{key}_env: environment variable {env} is not set")
    return str(value) if value is not None else None


def load_serve_config(path: str | Path, options: ServeOptions | None = None) -> ServeOptions:
    """Read a ``dagengine serve`` YAML file into ``options`` (relative paths in it are
    relative to the file). Raises :class:`ConfigError` naming the key for anything wrong."""
    file = Path(path)
    opts = options or ServeOptions()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise _bad(str(file), f"invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _bad(str(file), "expected a mapping at the top")
    _check_keys(str(file), data, _TOP_KEYS)
    opts.base_dir = file.resolve().parent
    http = data.get("http") or {}
    if not isinstance(http, dict):
        raise _bad("http", "expected a mapping")
    _check_keys("http", http, _HTTP_KEYS)
    opts.host = str(http.get("host", opts.host))
    if "port" in http:
        opts.port = _int("http.port", http["port"], 0, 65535)
    if "max_body_bytes" in http:
        opts.max_body_bytes = _int("http.max_body_bytes", http["max_body_bytes"], 1, 2**40)
    opts.api_token = _secret("http", http, "token") or opts.api_token
    opts.allow_python_specs = bool(http.get("allow_python_specs", opts.allow_python_specs))
    if "store" in data:
        store = str(data["store"])
        opts.store = (
            store
            if store == ":memory:" or is_postgres_url(store)
            else str(opts.base_dir / Path(store).expanduser())
        )
    if "replica" in data:
        if not isinstance(data["replica"], bool):
            raise _bad("replica", f"expected true or false, got {data['replica']!r}")
        opts.replica = data["replica"]
    folders = data.get("workflows")
    if folders is not None:
        items = [folders] if isinstance(folders, str) else folders
        if not isinstance(items, list):
            raise _bad("workflows", "expected a folder or a list of folders")
        opts.workflows = [str(opts.base_dir / str(item)) for item in items]
    if "engines" in data:
        opts.engines = _int("engines", data["engines"], 0, 256)
    if "engine_capacity" in data:
        opts.engine_capacity = _int("engine_capacity", data["engine_capacity"], 1, 100_000)
    discovery = data.get("discovery") or {}
    if not isinstance(discovery, dict):
        raise _bad("discovery", "expected a mapping")
    opts.discovery = discovery
    if "grpc_port" in data:
        opts.grpc_port = _int("grpc_port", data["grpc_port"], 0, 65535)
    triggers = data.get("triggers") or []
    if not isinstance(triggers, list) or not all(isinstance(t, dict) for t in triggers):
        raise _bad("triggers", "expected a list of mappings")
    opts.triggers = triggers
    if data.get("retention") is not None:
        opts.retention = _retention(data["retention"], opts.base_dir)
    return opts


def _duration(where: str, value: Any, *, allow_off: bool = False) -> float | None:
    if allow_off and (
        value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none"))
    ):
        return None  # (YAML reads a bare off as false)
    try:
        seconds = parse_duration(value, what=where)
    except (TypeError, ValueError) as exc:
        raise _bad(where, str(exc)) from None
    if seconds <= 0:
        raise _bad(where, f"expected a positive duration such as 7d or 12h, got {value!r}")
    return seconds


def _retention(value: Any, base_dir: Path) -> dict[str, Any]:
    """The ``Config`` fields of a ``retention:`` value (a duration, or a mapping)."""
    if not isinstance(value, dict):
        return {"retention": _duration("retention", value, allow_off=True)}
    _check_keys("retention", value, _RETENTION_KEYS)
    out: dict[str, Any] = {}
    if "max_age" in value:
        out["retention"] = _duration("retention.max_age", value["max_age"], allow_off=True)
    if "keep_last" in value:
        out["keep_last"] = _int("retention.keep_last", value["keep_last"], 0, 10**9)
    if value.get("export_dir") is not None:
        out["export_dir"] = str(base_dir / Path(str(value["export_dir"])).expanduser())
    if "interval" in value:
        out["prune_interval"] = _duration("retention.interval", value["interval"])
    return out


def _int(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(where, f"expected an integer between {low} and {high}, got {value!r}")
    return value


def build_triggers(specs: Sequence[Mapping[str, Any]]) -> list[Trigger]:
    """Trigger objects from the ``triggers:`` list of a serve config."""
    out: list[Trigger] = []
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        where = f"triggers[{index}]"
        kind = spec.get("type")
        for key in ("id", "workflow_id"):
            if not isinstance(spec.get(key), str):
                raise _bad(f"{where}.{key}", "required (a string)")
        trigger_id = str(spec["id"])
        if trigger_id in seen:
            raise _bad(f"{where}.id", f"trigger id {trigger_id!r} is used twice")
        seen.add(trigger_id)
        inputs = spec.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise _bad(f"{where}.inputs", "expected a mapping")
        try:
            if kind == "cron":
                _check_keys(where, spec, _CRON_KEYS)
                if not isinstance(spec.get("schedule"), str):
                    raise _bad(f"{where}.schedule", "required (a cron expression)")
                out.append(
                    CronTrigger(
                        trigger_id,
                        spec["schedule"],
                        spec["workflow_id"],
                        version=spec.get("version"),
                        timezone=str(spec.get("timezone", "UTC")),
                        inputs=inputs,
                        overlap=str(spec.get("overlap", "skip")),
                        catchup=str(spec.get("catchup", "latest")),
                        catchup_window=spec.get("catchup_window", 0),
                    )
                )
            elif kind == "http":
                _check_keys(where, spec, _HTTP_TRIGGER_KEYS)
                if not isinstance(spec.get("path"), str):
                    raise _bad(f"{where}.path", "required (a URL path like /hooks/build)")
                sync_timeout = spec.get("sync_timeout", 300.0)
                if (
                    isinstance(sync_timeout, bool)
                    or not isinstance(sync_timeout, (int, float))
                    or not 0 < sync_timeout <= 1e9
                ):
                    raise _bad(
                        f"{where}.sync_timeout",
                        f"expected seconds in (0, 1e9], got {sync_timeout!r}",
                    )
                trigger = HTTPTrigger(
                    trigger_id,
                    spec["path"],
                    spec["workflow_id"],
                    version=spec.get("version"),
                    mode=str(spec.get("mode", "sync")),
                    auth=str(spec.get("auth", "none")),
                    secret=_secret(where, spec, "secret"),
                    tolerance=spec.get("tolerance"),
                    max_body_bytes=_int(
                        f"{where}.max_body_bytes",
                        spec.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
                        1,
                        2**40,
                    ),
                    sync_timeout=float(sync_timeout),
                    inputs=inputs,
                )
                check_path(trigger)  # (the API would refuse it later, without naming where)
                out.append(trigger)
            else:
                raise _bad(f"{where}.type", f"expected cron or http, got {kind!r}")
        except TriggerError as exc:
            raise _bad(where, str(exc)) from None
    return out


# -- workflows -----------------------------------------------------------------------------


def _import_file(path: Path) -> ModuleType:
    """Import ``path``: as ``package.module`` when its folder is a package (so specs that
    name ``package.module:fn`` share the module object), else as a top-level module."""
    folder = path.parent
    if (folder / "__init__.py").exists():
        root, name = str(folder.parent), f"{folder.name}.{path.stem}"
    else:
        root, name = str(folder), path.stem
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(name)


def load_workflows(orchestrator: Any, folder: str | Path) -> list[tuple[str, str]]:
    """Register every workflow in ``folder`` (not recursive), in name order; returns the
    ``(id, version)`` pairs.

    * ``*.yaml``, ``*.yml``, ``*.json``: workflow specs; id and version come from the spec
      (a spec without a version is an error naming the file). A mapping without ``nodes``
      is not a spec (e.g. a serve config kept beside the workflows) and is skipped.
    * ``*.py``: a module defining ``WORKFLOWS = [(id, version, builder), ...]`` (builder: a
      DAG, a spec dict, or a callable returning one) and/or ``register(orchestrator)``, which
      registers what it likes. Modules with neither (helpers such as node functions) are
      imported and otherwise ignored; ``__init__.py`` and ``_private.py`` are skipped.
    """
    from dagengine.spec import load_workflow

    base = Path(folder)
    if not base.is_dir():
        raise ConfigError(
            f"workflows folder {base} does not exist", variable="workflows", value=str(base)
        )
    # Specs may name the folder's modules (``python: tasks:fn``, or ``pkg.tasks:fn`` when
    # the folder is a package): make them importable before the first spec is parsed.
    root = _import_root(base)
    if root not in sys.path:
        sys.path.insert(0, root)
    registered: list[tuple[str, str]] = []
    for path in sorted(base.iterdir()):
        if path.suffix.lower() in _SPEC_SUFFIXES and path.is_file():
            if not _is_workflow_spec(path):
                log.info("%s: not a workflow spec (no nodes), skipped", path)
                continue
            dag = load_workflow(path)
            if not dag.version:
                raise SpecError(f"{path}: a served workflow needs a version", path="version")
            assert dag.id is not None
            orchestrator.register_workflow(dag.id, dag.version, dag)
            registered.append((dag.id, dag.version))
        elif path.suffix == ".py" and not path.name.startswith("_"):
            module = _import_file(path)
            for entry in getattr(module, "WORKFLOWS", ()):
                workflow_id, version, builder = entry
                orchestrator.register_workflow(workflow_id, version, builder)
                registered.append((workflow_id, version))
            register = getattr(module, "register", None)
            if callable(register):
                register(orchestrator)
    return registered


def _import_root(folder: Path) -> str:
    """The ``sys.path`` entry that makes a workflows folder's modules importable by the names
    its specs use: the folder itself, or its parent when the folder is a package."""
    return str(folder.resolve().parent if (folder / "__init__.py").exists() else folder.resolve())


def _is_workflow_spec(path: Path) -> bool:
    """Whether a YAML/JSON file in a workflows folder is a workflow spec: a mapping with a
    ``nodes`` key. Other files (a serve config kept beside the workflows) are skipped; a file
    that does not parse is handed to the spec loader, which reports it properly."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return True
    return not isinstance(data, dict) or "nodes" in data


# -- engines -------------------------------------------------------------------------------


class _LocalEngines:
    """``dagengine engine`` child processes on loopback, each registered by address."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, count: int, capacity: int, paths: Sequence[str]) -> list[tuple[str, str]]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*paths, *sys.path[1:]])
        # The engines exit with this process, however it ends (SIGKILL too): they watch
        # their parent (Linux's parent-death signal) and their stdin pipe, whose write end
        # only this process holds, for EOF.
        env[PARENT_PID_ENV] = str(os.getpid())
        engines: list[tuple[str, str]] = []
        for index in range(1, count + 1):
            engine_id = f"engine-{index}"
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dagengine",
                    "engine",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--engine-id",
                    engine_id,
                    "--capacity",
                    str(capacity),
                    "--drain-grace",
                    "2",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            self.procs.append(proc)
            line = self._first_line(proc, engine_id)
            address = line.rsplit(" ", 1)[-1]
            engines.append((engine_id, address))
        return engines

    @staticmethod
    def _first_line(proc: subprocess.Popen[str], engine_id: str) -> str:
        assert proc.stdout is not None
        holder: list[str] = []
        reader = threading.Thread(target=lambda: holder.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        if not holder or "listening on" not in holder[0]:
            raise DagEngineError(f"local engine {engine_id} did not start (exit {proc.poll()})")
        return holder[0].strip()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        self.procs.clear()


# -- serve ---------------------------------------------------------------------------------


def _orchestrator_config(opts: ServeOptions, env: Mapping[str, str] | None) -> Config:
    config = Config.from_env(env)
    changes: dict[str, Any] = {}
    if opts.store is not None:
        changes["store_path"] = opts.store
    if opts.replica is not None:
        changes["replica"] = opts.replica
    if opts.port is not None:
        changes["http_port"] = opts.port
    if opts.discovery:
        kind = str(opts.discovery.get("type", "static"))
        if kind not in DISCOVERY_TYPES:
            raise _bad("discovery.type", f"expected one of {', '.join(DISCOVERY_TYPES)}")
        changes["discovery"] = kind
        engines = opts.discovery.get("engines") or []
        if engines:
            changes["engines"] = tuple(str(e) for e in engines)
        for key in ("k8s_namespace", "k8s_label_selector"):
            if key in opts.discovery:
                changes[key] = str(opts.discovery[key])
    if opts.grpc_port is not None:
        changes["grpc_port"] = opts.grpc_port
    changes.update(opts.retention)
    if config.grpc_host is None:
        # OrchestratorService listens where the API does unless DAGENGINE_GRPC_HOST says.
        changes["grpc_host"] = opts.host
    config = dataclasses.replace(config, **changes)
    if config.store_path != ":memory:" and not is_postgres_url(config.store_path):
        Path(config.store_path).parent.mkdir(parents=True, exist_ok=True)
    return config


def serve(
    opts: ServeOptions,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT (or ``stop`` is set); returns the exit code."""
    from dagengine.api import ServerThread, create_app
    from dagengine.api.ui.routes import set_cron_triggers
    from dagengine.orchestrator import Engine, Orchestrator

    out = out if out is not None else sys.stdout
    stop = stop if stop is not None else threading.Event()
    config = _orchestrator_config(opts, env)
    triggers = build_triggers(opts.triggers)
    engines = _LocalEngines()
    event_log = EventLogger()
    tracer = None
    orch: Any = None
    server: ServerThread | None = None
    app: Any = None
    started: list[Trigger] = []
    previous: dict[int, Any] = {}
    # The workflows' modules are importable before anything reads a stored spec: the stored
    # runs resume (recover(), below) once the folders are loaded, not when the orchestrator
    # opens its store (their python: nodes did not resolve then, and every such run failed).
    roots = [_import_root(Path(folder)) for folder in opts.workflows]
    for root in reversed(roots):
        if root not in sys.path:
            sys.path.insert(0, root)
    try:
        if config.discovery != "none":
            orch = Orchestrator.from_config(config, grpc_port=opts.grpc_port, recover=False)
        else:
            orch = Orchestrator(config=config, embedded_engine=False, recover=False)
            if opts.engines == 0:  # the embedded engine, as many runs at once as configured
                orch.register_engine("local", Engine(capacity=opts.engine_capacity))
            # Engine processes import python nodes by the same paths the specs use.
            paths = [*roots, os.getcwd()]
            for engine_id, address in engines.start(opts.engines, opts.engine_capacity, paths):
                orch.register_engine(engine_id, address)
        for folder in opts.workflows:
            for workflow_id, version in load_workflows(orch, folder):
                log.info("registered %s@%s", workflow_id, version)
        orch.recover()
        event_log.attach(orch)
        tracer = attach_tracing(orch)
        app = create_app(
            orch,
            triggers=[t for t in triggers if isinstance(t, HTTPTrigger)],
            max_body_bytes=opts.max_body_bytes,
            api_token=opts.api_token,
            allow_python_specs=opts.allow_python_specs,
        )
        set_cron_triggers(app, [t for t in triggers if isinstance(t, CronTrigger)])
        port = opts.port if opts.port is not None else config.http_port
        server = ServerThread(app, opts.host, port)
        try:
            server.start()
        except OSError as exc:
            raise DagEngineError(
                f"cannot listen on {opts.host}:{port}: {exc.strerror or exc}"
            ) from None
        for trigger in triggers:
            trigger.start(orch)
            started.append(trigger)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, on_signal)
        print(f"dagengine serve listening on {server.url}", file=out, flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        for trigger in reversed(started):
            trigger.stop()
        if app is not None:
            app.state.api.end_streams()  # open UI pages' streams end now, not at the timeout
        if server is not None:
            server.stop()
        if app is not None:
            app.state.api.close()
        event_log.detach()
        if tracer is not None:
            tracer.detach()
        if orch is not None:
            orch.stop()
        engines.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)

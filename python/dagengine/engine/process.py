"""The engine process (:func:`serve_engine`, run by ``dagengine engine``): imports the node
modules, starts the core's gRPC server, self-registers if asked, drains on SIGTERM/SIGINT or
when the process that started it is gone."""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import IO, Any

from dagengine import _core
from dagengine.cache import python_code_identity
from dagengine.engine._channel import DEFAULT_MAX_MESSAGE_BYTES
from dagengine.engine._tls import TLSConfig
from dagengine.engine.address import split_address
from dagengine.engine.registration import (
    OrchestratorSubWorkflowRunner,
    SelfRegistrar,
    advertise_address,
    no_orchestrator,
    orchestrator_credentials_from_env,
)
from dagengine.exceptions import EngineStartError, ImportPathError
from dagengine.node_logs import NodeLogStore
from dagengine.nodes import SubWorkflow, SubWorkflowRunner, resolve_import_path
from dagengine.spec_model import parse_workflow_ref
from dagengine.workflow import make_invoke

__all__ = ["PARENT_PID_ENV", "serve_engine"]


class _Resolver:
    """``resolve(kind, reference)`` for the core: python import paths and sub-workflow
    references, each resolved once per engine (a class is instantiated once)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Any] = {}
        #: Code identities by import path, then node id ("": any node), taken when the
        #: path was resolved (see :meth:`code_identity`).
        self._codes: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, reference: str) -> Any:
        key = (kind, reference)
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        value = self._resolve(kind, reference)
        codes = _identities(value) if kind == "python" else {}
        with self._lock:
            self._codes.setdefault(reference, codes)
            return self._cache.setdefault(key, value)

    def code_identity(self, reference: str, node_id: str) -> str:
        """The code identity of cached Python node ``node_id`` calling ``reference`` here
        (:func:`dagengine.cache.python_code_identity` of what it resolves to): the
        engine's, which wins over the one a run's sender computed on its own copy. It is
        the one taken when the path was first resolved: the source read from the file
        later (for another workflow naming it) could be newer than the code that runs."""
        fn = self("python", reference)
        with self._lock:
            codes = self._codes.get(reference, {})
        found = codes.get(node_id, codes.get(""))
        return found if found is not None else python_code_identity(fn, node_id)

    def _resolve(self, kind: str, reference: str) -> Any:
        if kind == "python":
            return resolve_import_path(reference).fn
        if kind == "workflow":
            ref = parse_workflow_ref(reference)
            return SubWorkflow(ref.workflow_id, ref.version_range)
        raise ImportPathError(f"unknown node kind {kind!r} for reference {reference!r}")


def _identities(fn: Any) -> dict[str, str]:
    """The code identities of ``fn`` by node id (``""``: any node; a decorated workflow's
    ``call_node``: each of its cached task calls'), computed now; none if that fails (the
    error is then raised for a cached node, not for every node calling ``fn``)."""
    owner = getattr(fn, "__self__", None)
    nodes = getattr(owner, "nodes", None) if getattr(fn, "__name__", "") == "call_node" else None
    try:
        if isinstance(nodes, Mapping):
            return {
                node_id: python_code_identity(fn, node_id)
                for node_id, node in nodes.items()
                if getattr(node, "cache", None) is not None
            }
        return {"": python_code_identity(fn, "")}
    except Exception:  # user code's repr() of a closure's values, a source unreadable...
        return {}


def _import_modules(modules: Iterable[str]) -> None:
    import importlib

    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise EngineStartError(
                f"--import {name}: cannot import: {type(exc).__name__}: {exc}"
            ) from exc
        _pin_source(module)


def _pin_source(module: Any) -> None:
    """Keep the source text ``module`` was imported from as the one :mod:`inspect` (and
    so a cached node's code identity, and tracebacks) reads for its file: without it, a
    file rewritten between ``--import`` and the first cached spec gave the loaded code the
    new file's identity. An entry without a modification time is one ``linecache`` never
    reads again (as for a module from a zip file)."""
    import linecache

    try:
        path = inspect.getsourcefile(module)
        if path is None:
            return
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except (OSError, TypeError, UnicodeDecodeError):
        return  # (no source to pin: the identity falls back as before)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    linecache.cache[path] = (len(text), None, lines, path)


#: Set by ``dagengine serve`` for the engine processes it starts (to its own pid): such an
#: engine drains and exits when that process is gone, even if it was killed with SIGKILL.
PARENT_PID_ENV = "DAGENGINE_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _parent_pid_from_env() -> int | None:
    # Taken out of the environment: it is about this process, not the ones it starts.
    text = os.environ.pop(PARENT_PID_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) <= 1:
        raise EngineStartError(f"{PARENT_PID_ENV}={text!r}: expected the parent's process id")
    return int(text)


def _watch_parent(parent_pid: int, gone: Callable[[], None]) -> None:
    """Call ``gone`` (from another thread, or at once) when process ``parent_pid`` -- this
    process's parent -- is gone.

    On Linux the kernel sends this process SIGTERM when the parent dies (``PR_SET_PDEATHSIG``,
    set here in the child; strictly, when the parent's *thread* that started this process
    ends -- ``dagengine serve`` starts its engines from its main thread). Then, and
    everywhere: a daemon thread reads stdin until EOF when it is a pipe (the parent holds its
    write end; the kernel closes it when the parent dies, however it dies), else polls
    :func:`os.getppid`. A parent already gone before any of this was armed is seen by the
    first ``getppid`` check (this process was re-parented).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        gone()
        return
    try:
        import stat

        stdin_is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        stdin_is_pipe = False

    def watch() -> None:
        if stdin_is_pipe:
            with contextlib.suppress(OSError):
                while os.read(0, 4096):
                    pass
        else:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
        gone()

    threading.Thread(target=watch, name="dagengine-parent-watch", daemon=True).start()


def serve_engine(
    engine_id: str | None = None,
    host: str = "0.0.0.0",
    port: int = 50051,
    capacity: int = 10,
    imports: Sequence[str] = (),
    *,
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    tls_client_ca: bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    drain_grace: float = 25.0,
    subworkflow_runner: SubWorkflowRunner | None = None,
    orchestrator_address: str | None = None,
    self_register: bool = False,
    advertise: str | None = None,
    orchestrator_tls: TLSConfig | None = None,
    orchestrator_token: str | None = None,
    parent_pid: int | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run an engine in this process until SIGTERM/SIGINT; return the exit code (0).

    Imports ``imports`` (modules whose import registers or warms up node code), starts the
    core's gRPC server, prints one line ``dagengine engine <id> listening on <host>:<port>``
    to stdout, and waits. On SIGTERM or SIGINT it drains: new runs are refused
    (``UNAVAILABLE``, health ``NOT_SERVING``), running ones get ``drain_grace`` seconds to
    finish, the rest are cancelled; then the server stops. Python nodes resolve their
    ``module:function`` import paths in this process; sub-workflow nodes go through
    ``subworkflow_runner`` (default: ``RunSubWorkflow`` on the orchestrator at
    ``orchestrator_address``, else :func:`subworkflow_runner_from_env`).

    With ``self_register`` the engine registers with that orchestrator right after it
    starts, as ``advertise`` (``host:port``; default: see :func:`advertise_address`), and
    keeps heartbeating (:class:`SelfRegistrar`) until it drains. Calls to the orchestrator
    use ``orchestrator_tls`` and send ``orchestrator_token`` (each defaults to
    :func:`orchestrator_credentials_from_env`).

    With ``parent_pid`` (default: ``DAGENGINE_PARENT_PID`` from the environment, which
    ``dagengine serve`` sets for the engines it starts) the engine also drains and exits when
    that process, its parent, is gone -- even killed with SIGKILL (see :func:`_watch_parent`).

    Must run on the main thread (it installs signal handlers). Raises
    :class:`EngineStartError` if a module does not import or the server cannot start.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    engine_id = engine_id or os.environ.get("ENGINE_ID") or socket.gethostname()
    if parent_pid is None:
        parent_pid = _parent_pid_from_env()
    if orchestrator_address is None:
        orchestrator_address = os.environ.get("ORCHESTRATOR_ADDRESS", "").strip() or None
    if self_register and orchestrator_address is None:
        raise EngineStartError(
            "self-registration needs the orchestrator's address (--orchestrator HOST:PORT or "
            "ORCHESTRATOR_ADDRESS)"
        )
    for what, value in (("orchestrator", orchestrator_address), ("advertise", advertise)):
        if value is not None:
            try:
                split_address(value)
            except ValueError as exc:
                raise EngineStartError(f"{what} address: {exc}") from None
    if orchestrator_address is not None and (
        orchestrator_tls is None or orchestrator_token is None
    ):
        env_tls, env_token = orchestrator_credentials_from_env()
        orchestrator_tls = orchestrator_tls or env_tls
        orchestrator_token = orchestrator_token or env_token
    _import_modules(imports)
    if subworkflow_runner is not None:
        runner = subworkflow_runner
    elif orchestrator_address is not None:
        runner = OrchestratorSubWorkflowRunner(
            orchestrator_address, tls=orchestrator_tls, token=orchestrator_token
        )
    else:
        runner = no_orchestrator
    # Python nodes' logging/print lines: the core takes each attempt's and sends them as
    # NODE_LOG events before the attempt's end.
    logs = NodeLogStore()
    resolver = _Resolver()
    server = _core.EngineServerRef(
        engine_id,
        make_invoke(None, runner, logs),
        resolver,
        host=host,
        port=port,
        capacity=capacity,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        max_message_bytes=max_message_bytes,
        logs=logs,
        code_identity=resolver.code_identity,
    )
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if parent_pid is not None:

        def parent_gone() -> None:
            received.append("parent exited")
            stop.set()

        _watch_parent(parent_pid, parent_gone)
    registrar: SelfRegistrar | None = None
    try:
        print(f"dagengine engine {engine_id} listening on {host}:{server.port}", file=out)
        out.flush()
        if self_register and orchestrator_address is not None:
            from dagengine import __version__

            registrar = SelfRegistrar(
                orchestrator_address,
                engine_id,
                advertise or advertise_address(host, server.port, orchestrator_address),
                capacity,
                __version__,
                tls=orchestrator_tls,
                token=orchestrator_token,
                log=lambda line: print(line, file=err, flush=True),
            ).start()
        # The wait releases the GIL in the core and returns often enough for the signal
        # handler (which only runs on this thread, between calls) to be seen promptly.
        while not stop.is_set():
            if server.wait_stopped(0.2):
                print(f"dagengine engine {engine_id}: server stopped", file=err)
                return 1
        if registrar is not None:
            registrar.stop()
        print(
            f"dagengine engine {engine_id}: {received[0]}: draining "
            f"(refusing new runs, {drain_grace:g}s grace for running ones)",
            file=err,
            flush=True,
        )
        cancelled = server.drain(drain_grace)
        server.stop()
        server.wait_stopped(10.0)
        print(
            f"dagengine engine {engine_id}: stopped; {cancelled} run(s) cancelled at the end "
            "of the grace period",
            file=err,
            flush=True,
        )
        return 0
    finally:
        if registrar is not None:
            registrar.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()

"""Hosts on one machine: Linux network namespaces joined by a bridge (``ip netns``, veth).

Everything lives in namespaces this module creates; the machine's own networking (the root
namespace) is never touched::

    dge-<pid>-<n>-hub     bridge br0, no address
      vh-orch ─── eth0 in dge-<pid>-<n>-orch   10.231.0.10/24
      vh-e1   ─── eth0 in dge-<pid>-<n>-e1     10.231.0.11/24
      ...

The hub holds the switch: each host's veth has one end (``eth0``) in the host's namespace and
the other (``vh-<host>``) enslaved to the bridge. :meth:`Network.link_down` sets the hub end
down, which is a pulled cable: the host's processes keep running, their peers get no RST and no
ICMP, and established TCP connections stay half-open until a timeout notices.

10.231.0.0/24 is unused on the development machine (``ip addr``: 192.0.2.0/24 only), and since
the addresses exist only inside the test's namespaces they cannot clash with the host anyway.

Cleanup: :meth:`Network.close` kills what still runs in the namespaces and deletes them (which
deletes their links); it runs from the fixture's finalizer and from ``atexit``, and
:func:`sweep_stale` removes what a killed test run (its pid is gone) left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["PREFIX", "SUBNET", "NetnsUnavailable", "Network", "available", "sweep_stale"]

#: Every namespace this module creates starts with this, then the creating process's pid.
PREFIX = "dge-"
#: The hosts' addresses: ``SUBNET.<10 + index>``; the orchestrator is index 0.
SUBNET = "10.231.0"
_BRIDGE = "br0"
_counter = itertools.count(1)
_STALE = re.compile(rf"^{re.escape(PREFIX)}(\d+)-\d+-")


class NetnsUnavailable(Exception):
    """This machine cannot run the multi-host tests (not root, or no ``ip netns``)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def available() -> None:
    """Raise :class:`NetnsUnavailable` naming the reason unless namespaces can be made here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "multi-host tests need root (ip netns); run them as root, as CI does"
        )
    if shutil.which("ip") is None:
        raise NetnsUnavailable("multi-host tests need iproute2 ('ip'): apt-get install iproute2")
    probe = f"{PREFIX}{os.getpid()}-0-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        raise NetnsUnavailable(f"'ip netns add' does not work here: {made.stderr.strip()}")
    try:
        ran = subprocess.run(
            ["ip", "netns", "exec", probe, "true"], capture_output=True, text=True, timeout=30
        )
    finally:
        _ip("netns", "del", probe, check=False)
    if ran.returncode != 0:
        raise NetnsUnavailable(f"'ip netns exec' does not work here: {ran.stderr.strip()}")


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_and_delete(names: Sequence[str]) -> None:
    """SIGKILL every process left in the namespaces, then delete them (and their links)."""
    pids: list[int] = []
    for name in names:
        out = _ip("netns", "pids", name, check=False).stdout
        pids.extend(int(p) for p in out.split() if p.isdigit())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
    for name in names:
        _ip("netns", "del", name, check=False)


def sweep_stale() -> list[str]:
    """Delete the namespaces of earlier test runs whose process is gone (a SIGKILLed pytest
    never ran its finalizers); returns their names. Namespaces of live processes are left."""
    stale = []
    for name in _namespaces():
        match = _STALE.match(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            stale.append(name)
        except PermissionError:
            pass  # alive, someone else's
    _kill_and_delete(stale)
    return stale


class Network:
    """A bridge and hosts in namespaces; see the module doc. Use :meth:`add_host` for each
    host (the first is index 0), :meth:`run_in` to start processes on a host, and
    :meth:`close` (idempotent) when done."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.hub = f"{self.tag}-hub"
        #: host name -> (namespace, address)
        self.hosts: dict[str, tuple[str, str]] = {}
        self._created: list[str] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._add_namespace(self.hub)
            _ip("-n", self.hub, "link", "add", _BRIDGE, "type", "bridge")
            _ip("-n", self.hub, "link", "set", _BRIDGE, "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, host: str) -> str:
        """Create host ``host`` (a short name: ``orch``, ``e1``) in its own namespace, wired to
        the bridge; returns its address."""
        if host in self.hosts:
            raise ValueError(f"host {host!r} exists")
        if len(f"vh-{host}") > 15:
            raise ValueError(f"host name {host!r} too long for an interface name")
        ns = f"{self.tag}-{host}"
        address = f"{SUBNET}.{10 + len(self.hosts)}"
        self._add_namespace(ns)
        hub_end = f"vh-{host}"
        _ip("-n", self.hub, "link", "add", hub_end, "type", "veth", "peer", "name", "eth0")
        _ip("-n", self.hub, "link", "set", "eth0", "netns", ns)
        _ip("-n", self.hub, "link", "set", hub_end, "master", _BRIDGE)
        _ip("-n", self.hub, "link", "set", hub_end, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self.hosts[host] = (ns, address)
        return address

    def namespace(self, host: str) -> str:
        """The namespace name of ``host``."""
        return self.hosts[host][0]

    def address(self, host: str) -> str:
        """The IPv4 address of ``host``."""
        return self.hosts[host][1]

    def run_in(self, host: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[str]:
        """Start ``argv`` on ``host`` (``ip netns exec``, which execs it: the returned
        process *is* the command, so signals reach it directly)."""
        popen.setdefault("text", True)
        return subprocess.Popen(["ip", "netns", "exec", self.namespace(host), *argv], **popen)

    def link_down(self, host: str) -> None:
        """Cut ``host`` off the network (its switch port goes down; packets are dropped both
        ways, nobody is told)."""
        _ip("-n", self.hub, "link", "set", f"vh-{host}", "down")

    def link_up(self, host: str) -> None:
        """Plug ``host`` back in."""
        _ip("-n", self.hub, "link", "set", f"vh-{host}", "up")

    def close(self) -> None:
        """Kill every process still in the namespaces and delete them all (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        # Hosts first, the hub (and with it every hub-side veth end) last.
        _kill_and_delete([ns for ns in self._created if ns != self.hub])
        _kill_and_delete([self.hub] if self.hub in self._created else [])

    def leftovers(self) -> list[str]:
        """Namespaces of this network that still exist (empty after :meth:`close`)."""
        return [name for name in _namespaces() if name.startswith(f"{self.tag}-")]

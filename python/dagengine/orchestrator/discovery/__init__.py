"""Finding engines, and checking that they are alive.

Discovery says which engines exist; :class:`HealthChecker` says which of them are alive. Three
discoveries implement the same :class:`Discovery` protocol:

- :class:`StaticDiscovery`: a fixed list of addresses (``ENGINES=host:port,...``); each
  engine's id and capacity come from its ``Info`` call.
- :class:`SelfRegistration`: engines announce themselves (``OrchestratorService.
  RegisterEngine``, whose handler calls :meth:`SelfRegistration.register`) and keep doing so;
  an engine that stops heartbeating is dropped.
- :class:`KubernetesDiscovery`: list + watch of the engine Pods through the Kubernetes API
  (the API calls it makes are listed in :data:`RBAC_RULES`, which the deployment's Role must
  grant).

``start(on_change)`` begins discovering; ``on_change`` receives the full current list of
:class:`EngineEndpoint` (sorted by engine id) every time it changes, from the discovery's own
thread, never concurrently with itself.

The modules follow those parts: ``_base`` (:class:`EngineEndpoint`, the protocol, address
parsing and the change publisher the discoveries share), ``static``, ``registration``, ``k8s``
(which imports the ``kubernetes`` client only when used) and ``health``; this package
re-exports their public names.
"""

from __future__ import annotations

from dagengine.orchestrator.discovery._base import (
    Discovery,
    EngineEndpoint,
    parse_address,
    parse_engine_addresses,
)
from dagengine.orchestrator.discovery._base import (
    OnChange as OnChange,
)
from dagengine.orchestrator.discovery.health import (
    HealthCallback as HealthCallback,
)
from dagengine.orchestrator.discovery.health import (
    HealthChecker,
    HealthReport,
    grpc_health_check,
)
from dagengine.orchestrator.discovery.k8s import RBAC_RULES, KubernetesDiscovery
from dagengine.orchestrator.discovery.registration import Registration, SelfRegistration
from dagengine.orchestrator.discovery.static import StaticDiscovery

__all__ = [
    "RBAC_RULES",
    "Discovery",
    "EngineEndpoint",
    "HealthChecker",
    "HealthReport",
    "KubernetesDiscovery",
    "Registration",
    "SelfRegistration",
    "StaticDiscovery",
    "grpc_health_check",
    "parse_address",
    "parse_engine_addresses",
]

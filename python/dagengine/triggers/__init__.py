"""Triggers: start workflow runs on a schedule (:class:`CronTrigger`) or on an HTTP request
(:class:`HTTPTrigger`), through the orchestrator.

Every triggered run gets ``_trigger_type``, ``_trigger_id`` and ``_trigger_time`` (ISO 8601
UTC) in its inputs. Cron triggers of one orchestrator share one :class:`TriggerScheduler`
thread; HTTP triggers are served by the app of :mod:`dagengine.api`.
"""

from dagengine.triggers.base import (
    Executor,
    RunLike,
    Trigger,
    format_trigger_time,
    trigger_inputs,
)
from dagengine.triggers.clock import Clock, ManualClock, SystemClock
from dagengine.triggers.cron import (
    CATCHUP_POLICIES,
    DESCRIPTORS,
    OVERLAP_POLICIES,
    CronSchedule,
    CronTrigger,
)
from dagengine.triggers.http import HTTPTrigger
from dagengine.triggers.scheduler import TriggerScheduler

__all__ = [
    "CATCHUP_POLICIES",
    "DESCRIPTORS",
    "OVERLAP_POLICIES",
    "Clock",
    "CronSchedule",
    "CronTrigger",
    "Executor",
    "HTTPTrigger",
    "ManualClock",
    "RunLike",
    "SystemClock",
    "Trigger",
    "TriggerScheduler",
    "format_trigger_time",
    "trigger_inputs",
]

"""The Prefect settings vectorfill runs with, in every process that runs a flow and in the
local Prefect server: a generous start-up timeout for Prefect's temporary server, task-run
history kept (the recorder's batch sizes), no analytics, Prefect's own loggers at WARNING
but the run loggers at INFO (their lines reach the run's Logs tab), no result persistence.
Any value already in the environment wins (:func:`vectorfill.orchestration.runtime.prefect_defaults`).
"""

from __future__ import annotations

__all__ = ["LOCAL_SERVER_SERVICES", "PREFECT_DEFAULTS"]

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}

LOCAL_SERVER_SERVICES = {
    # used: schedules of `vectorfill serve` (scheduler), the re-embed deployment's event
    # trigger (triggers, event persister), task-run history (task run recorder): left on.
    # and the cleanup reconciler (work pools' workers): left on. Not used by vectorfill,
    # each a loop waking every 5-20 s on the idle server: off.
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",  # cancelling parent runs' children
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",  # paused flow runs (never paused here)
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",  # relabels overdue scheduled runs "Late"
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",  # marks silent workers and pools offline
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",  # global concurrency-limit leases (none used)
    # slower, not off: proactive automations ("no event within...": vectorfill's trigger is
    # reactive) are evaluated every minute instead of 5 s, and the triggers service checks
    # its Postgres LISTEN connection every minute instead of 5 s (a query each time)
    "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT60S",
    "PREFECT_SERVER_SERVICES_TRIGGERS_PG_NOTIFY_HEARTBEAT_INTERVAL_SECONDS": "60",
}
"""Prefect server services the local server (:mod:`vectorfill.orchestration.local_server`)
runs without: Prefect's own settings, each overridable from the environment."""

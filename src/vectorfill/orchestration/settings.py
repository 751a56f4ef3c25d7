"""The Prefect settings vectorfill runs with, in every process that runs a flow and in the
local Prefect server: a generous start-up timeout for Prefect's temporary server, task-run
history kept (the recorder's batch sizes), no analytics, Prefect's own loggers at WARNING
but the run loggers at INFO (their lines reach the run's Logs tab), no result persistence.
Any value already in the environment wins (:func:`vectorfill.orchestration.runtime.prefect_defaults`).
"""

from __future__ import annotations

__all__ = ["PREFECT_DEFAULTS"]

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

"""A SIGTERM that lands while a flow run holds Prefect's own handler arrives as Prefect's
``TerminationSignal``: the command line takes it for the SIGTERM it is (exit 143, claims
given back), and nothing else for one."""

from __future__ import annotations

import importlib
import signal

import pytest
from prefect.exceptions import TerminationSignal

app = importlib.import_module("vectorfill.cli.app")  # the module (the package's `app` is the Typer)


def test_prefects_termination_signal_is_a_sigterm():
    assert app._prefect_termination(TerminationSignal(signal=signal.SIGTERM))


@pytest.mark.parametrize(
    "exc", [TerminationSignal(signal=signal.SIGINT), KeyboardInterrupt(), SystemExit(0), GeneratorExit()]
)
def test_nothing_else_is(exc):
    assert not app._prefect_termination(exc)


def test_it_exits_143_as_any_sigterm(monkeypatch, capsys):
    def run(*args, **kwargs):
        raise TerminationSignal(signal=signal.SIGTERM)

    monkeypatch.setattr(app, "app", run)
    with pytest.raises(SystemExit) as exited:
        app._main(["backfill", "docs"])
    assert exited.value.code == 128 + signal.SIGTERM
    assert "terminated (SIGTERM)" in capsys.readouterr().err


def test_a_flow_run_here_keeps_the_commands_own_sigterm_handler(monkeypatch):
    import prefect.utilities.engine as engine

    from vectorfill.orchestration.runtime import keep_sigterm_handler

    monkeypatch.setattr(engine, "_prefect_sigterm_handler", engine._prefect_sigterm_handler)  # restored after

    def ours(signum, frame):  # the command line's (cli.app._stop_on_sigterm)
        pass

    before = signal.signal(signal.SIGTERM, ours)
    try:
        keep_sigterm_handler()
        with engine.capture_sigterm():  # what Prefect's flow engine does around every flow run
            assert signal.getsignal(signal.SIGTERM) is ours
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)


def test_without_it_prefect_takes_sigterm_for_the_run(monkeypatch):
    import prefect.utilities.engine as engine

    def ours(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, ours)
    try:
        with engine.capture_sigterm():
            assert signal.getsignal(signal.SIGTERM) is engine._prefect_sigterm_handler
    finally:
        signal.signal(signal.SIGTERM, before)

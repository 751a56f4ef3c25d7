"""The error tree: each error says whether a retry can help and whether it stops the run, and
a run's many concurrent failures are reported by the one that matters."""

from __future__ import annotations

import asyncio

import pytest

from vectorfill import errors
from vectorfill.errors import (
    AuthenticationError,
    BudgetUnavailable,
    ConfigError,
    DatabaseError,
    DatabaseRefused,
    DatabaseUnavailable,
    InputError,
    JobError,
    ModelNotFound,
    QuotaExceeded,
    RequestRejected,
    RowsFailed,
    SecretMissing,
    SourceError,
    TerminalProviderError,
    TransientProviderError,
    first_error,
    is_transient,
    stop_reason,
    stops_run,
)

TRANSIENT = [
    TransientProviderError,
    DatabaseError,
    DatabaseUnavailable,
    BudgetUnavailable,
    errors.DocumentStoreUnavailable,
]
STOPS_THE_RUN = [AuthenticationError, ModelNotFound, QuotaExceeded, RequestRejected, ConfigError, SecretMissing]
NEITHER = [TerminalProviderError, InputError, JobError, SourceError, DatabaseRefused]


@pytest.mark.parametrize("cls", TRANSIENT)
def test_transient_errors_are_retried_and_never_stop_the_run(cls):
    exc = cls("boom")
    assert is_transient(exc) and not stops_run(exc)


@pytest.mark.parametrize("cls", STOPS_THE_RUN)
def test_errors_that_make_every_further_request_pointless_stop_the_run_and_are_not_retried(cls):
    exc = cls("boom")
    assert stops_run(exc) and not is_transient(exc)


@pytest.mark.parametrize("cls", NEITHER)
def test_an_inputs_or_a_requests_terminal_error_neither_retries_nor_stops(cls):
    exc = cls("boom")
    assert not stops_run(exc) and not is_transient(exc)


#: One row's document: the row fails with the reason, the run goes on (built from a URI and a problem).
DOCUMENT_ERRORS = [
    errors.DocumentError,
    errors.DocumentMissing,
    errors.DocumentDenied,
    errors.DocumentTooLarge,
    errors.DocumentFormatError,
    errors.DocumentEncrypted,
    errors.DocumentNoText,
    errors.DocumentEmpty,
]


@pytest.mark.parametrize("cls", DOCUMENT_ERRORS)
def test_a_bad_document_fails_its_row_with_a_reason_and_neither_retries_nor_stops(cls):
    exc = cls("s3://bucket/a.pdf", "the problem", job="docs")
    assert not stops_run(exc) and not is_transient(exc)
    assert str(exc) == "job 'docs': s3://bucket/a.pdf: the problem" and exc.uri == "s3://bucket/a.pdf"
    assert exc.reason and exc.reason.replace("_", "").isalpha()


@pytest.mark.parametrize("exc", [OSError("disk"), TimeoutError(), ValueError("x")])
def test_foreign_errors_are_never_taken_for_transient(exc):
    assert not is_transient(exc) and not stops_run(exc)


def test_every_exported_error_is_classified_above():
    exported = {getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)}
    classified = set(TRANSIENT + STOPS_THE_RUN + NEITHER + DOCUMENT_ERRORS) | {
        errors.VectorfillError,
        errors.ProviderError,
        RowsFailed,
        errors.SpendCapReached,  # (below: it takes the cap's figures)
    }
    assert exported == classified


def test_messages_name_the_job_and_provider_errors_keep_their_details():
    exc = TransientProviderError("slow down", job="docs", status=429, code="rate_limit_exceeded", retry_after=2.5)
    assert str(exc) == "job 'docs': slow down" and exc.job == "docs"
    assert (exc.status, exc.code, exc.retry_after) == (429, "rate_limit_exceeded", 2.5)
    assert str(ConfigError("no job")) == "no job"
    rejected = RequestRejected("refused", setting="dimensions", job="docs", status=400)
    assert rejected.setting == "dimensions" and rejected.status == 400
    assert InputError("too long", job="docs", row=7).row == 7


def test_rows_failed_carries_the_summary_and_says_what_to_run():
    summary = object()
    exc = RowsFailed(summary, 1234, "docs")
    assert exc.summary is summary
    assert (
        "1,234 rows failed" in str(exc)
        and "`vectorfill failures docs`" in str(exc)
        and "`vectorfill retry docs`" in str(exc)
    )


def test_first_error_of_the_lanes_is_the_one_that_stopped_the_run_however_deep():
    transient = TransientProviderError("5xx")
    auth = AuthenticationError("bad key")
    group = BaseExceptionGroup("lanes", [transient, ExceptionGroup("inner", [InputError("row"), auth])])
    assert first_error(group) is auth


def test_first_error_without_a_stopper_is_the_first_leaf_in_order():
    a, b = TransientProviderError("first"), DatabaseError("second")
    assert first_error(BaseExceptionGroup("lanes", [ExceptionGroup("inner", [a]), b])) is a


def test_stop_reason_is_one_line_for_the_rows_given_back():
    auth = AuthenticationError("bad key", job="docs")
    assert stop_reason(ExceptionGroup("lanes", [DatabaseError("gone"), auth])) == "job 'docs': bad key"
    assert stop_reason(asyncio.CancelledError()) == "run interrupted"
    assert stop_reason(KeyboardInterrupt()) == "run interrupted"
    assert stop_reason(BaseExceptionGroup("lanes", [asyncio.CancelledError()])) == "run interrupted"
    assert stop_reason(RuntimeError()) == "RuntimeError"


def test_a_spend_cap_reached_stops_the_run_and_says_which_cap_and_when_it_resets():
    from datetime import UTC, datetime

    exc = errors.SpendCapReached(
        job="docs",
        setting="max_usd_per_day",
        cap=5.0,
        spent=4.99,
        cost=0.04,
        resets_at=datetime(2026, 12, 8, tzinfo=UTC),
    )
    assert stops_run(exc) and not is_transient(exc)
    text = str(exc)
    assert text.startswith("job 'docs': ") and "max_usd_per_day=5 USD" in text and "4.9900 USD spent" in text
    assert "resets at 2026-12-08 00:00 UTC" in text and "rows stay queued" in text

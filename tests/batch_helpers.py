"""Looks at a Batch API backfill shared by the batch modules: the job's batches, its queue, and
the fake provider's batches moved on until final (tests/fake_batch_api.py)."""

from __future__ import annotations

import time

from vectorfill.jobs.batches import list_batches


def batches(env, job="docs"):
    with env.connect() as conn:
        return list_batches(conn, job)


def queue_state(env, version=1):
    with env.connect() as conn:
        return conn.execute(
            f"SELECT count(*), count(claimed_by), min(lease_until - now()) FROM vectorfill._q_1_{version}"
        ).fetchone()


def wait_for_fake(env, timeout=10.0):
    """Until every batch at the fake is final (the fake moves on as it is polled)."""
    api = env.provider.batch_api
    deadline = time.monotonic() + timeout
    while True:
        for b in list(api.batches.values()):
            api._advance(b)
        if all(b.status in ("completed", "failed", "expired", "cancelled") for b in api.batches.values()):
            return
        assert time.monotonic() < deadline
        time.sleep(0.02)

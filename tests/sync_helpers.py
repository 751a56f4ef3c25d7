"""Waits and looks at a job's queues, shared by the sync modules (in this process and as
`vectorfill serve --sync`)."""

from __future__ import annotations

import time

import numpy as np


def wait_until(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def in_step(env, provider) -> bool:
    """Every source row has ``provider``'s vector for its current text, and nothing else is there."""
    texts, vectors = env.texts(), env.vectors()
    if set(texts) != set(vectors):
        return False
    return all(np.allclose(vectors[k], provider.expected_vector(t), atol=1e-6) for k, t in texts.items())


def queued(env, version: int) -> int:
    with env.connect() as conn:
        conn.execute("SELECT vectorfill._absorb_1()")  # the change log into the queues, as a claim does
        return conn.execute(f"SELECT count(*) FROM vectorfill._q_1_{version}").fetchone()[0]


def leased(env, version: int = 1) -> int:
    with env.connect() as conn:
        return conn.execute(f"SELECT count(*) FROM vectorfill._q_1_{version} WHERE lease_until > now()").fetchone()[0]

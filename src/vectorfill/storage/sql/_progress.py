"""How far a version is: what a new version lacks beside the active one (the re-embed's
catch-up), and the sync loop's cheap poll of a job's queues."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from vectorfill.storage.sql._changelog import log_table
from vectorfill.storage.sql._compose import JobTables

# ----------------------------------------------------------------- re-embed catch-up and continuous sync
# (issue 11: a re-embed switches as soon as the new version is at least as complete as the
# active one; `vectorfill serve --sync` polls the queues instead of waiting for a schedule)


def behind(new: JobTables, active: JobTables) -> sql.Composed:
    """What the new version lacks that the active one has: rows queued in ``new``, or
    failed there (other than rows with no text), whose vector in ``active`` is up to date
    (stored, and not queued again). Zero for both means no reader loses a fresh vector
    when the view moves to ``new``; rows queued in both stay queued in ``new``.

    Index look-ups per queued and failed row of ``new`` (run it when that queue is small:
    :func:`vectorfill.jobs.versions.complete` looks at the plain counts first).
    Parameters: job_id, version (the new one's)."""
    failed_keys = [
        sql.SQL("v.{} = (f.row_key->>{})::{}").format(k, sql.Literal(i), t)
        for i, (k, t) in enumerate(zip(active.k, active.types, strict=True))
    ]
    return sql.SQL(
        """SELECT (SELECT count(*) FROM {qn} n
                    WHERE EXISTS (SELECT 1 FROM {va} v WHERE {vn} AND v.chunk_seq = 0)
                      AND NOT EXISTS (SELECT 1 FROM {qa} a WHERE {an})) AS queued,
                  (SELECT count(*) FROM vectorfill.failures f
                    WHERE f.job_id = %(job_id)s AND f.version = %(version)s AND f.reason <> 'empty_text'
                      AND EXISTS (SELECT 1 FROM {va} v
                                   WHERE {fv} AND v.chunk_seq = 0
                                     AND NOT EXISTS (SELECT 1 FROM {qa} a WHERE {av}))) AS failed"""
    ).format(
        qn=new.q,
        va=active.v,
        qa=active.q,
        vn=new._match("v", "n"),
        an=new._match("a", "n"),
        fv=sql.SQL(" AND ").join(failed_keys),
        av=new._match("a", "v"),
    )


def sync_poll(queues: Sequence[JobTables]) -> sql.Composed:
    """One row: the job's versions as ``version:state,...`` (a change means set-model, a
    switch, a pause or an abandon happened: the sync loop reloads the job), then for each
    queue whether it holds a row a claim would take now (not leased, or its lease expired).

    ``EXISTS`` stops at the first such row: on an idle queue (empty, or holding only rows
    leased by a run) it costs next to nothing, so the sync loop runs this every few hundred
    milliseconds, on one connection for all of a job's versions. Parameter: job_id."""
    exists = [
        sql.SQL("EXISTS (SELECT 1 FROM {q} WHERE lease_until IS NULL OR lease_until < now())").format(q=js.q)
        for js in queues
    ]
    if queues:  # changes not absorbed yet are work too (the claim absorbs them)
        exists.append(sql.SQL("EXISTS (SELECT 1 FROM {})").format(log_table(queues[0].job)))
    return sql.SQL(
        """SELECT (SELECT coalesce(string_agg(version::text || ':' || state, ',' ORDER BY version), '')
                     FROM vectorfill.versions WHERE job_id = %(job_id)s){}"""
    ).format(sql.SQL("").join(sql.SQL(", {}").format(e) for e in exists))

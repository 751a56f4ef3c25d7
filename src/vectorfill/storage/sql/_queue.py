"""Statements on one version's queue (``_q_<job>_<version>``): fill it, claim from it,
read the claimed rows' texts, fail, requeue, renew, release, count.

Locking
-------
* **Claim** (:meth:`QueueStatements.claim`) is one ``UPDATE ... FROM (SELECT ... FOR
  UPDATE SKIP LOCKED)``: concurrent workers never pick the same row, and each claim records
  the ``seq`` it saw. The texts are read by a *second* statement
  (:meth:`QueueStatements.read_texts`), whose fresh snapshot is at least as new as the
  claimed ``seq``. The transaction then commits: nothing is held open across the HTTP call.
* A claim's lease (``lease_until``) keeps the rows reserved after that short transaction;
  it expires by itself when a worker dies, and :meth:`QueueStatements.renew` extends it
  while a run still holds the rows.
* :meth:`QueueStatements.fail` and :meth:`QueueStatements.dequeue` act only on rows still
  at their claimed ``seq``, like the store (:mod:`._vectors`).
"""

from __future__ import annotations

from psycopg import sql

from vectorfill.storage.sql._compose import SCHEMA, JobTables, text_expression


class QueueStatements(JobTables):
    """The queue family of :class:`~vectorfill.storage.sql.JobSQL`."""

    def enqueue_all(self) -> sql.Composed:
        """Queue every existing source row into the queue of a new job or version, created in
        the same transaction, with writes to the source blocked (by CREATE TRIGGER, or
        :func:`lock_source`): the queue is empty, so no ON CONFLICT (its speculative
        insertion cost 1.8x a plain insert), and one seq serves every row (it is compared
        per key only)."""
        return sql.SQL(
            """INSERT INTO {q} ({k}, seq)
               SELECT {sk}, n.seq FROM {src} s, (SELECT nextval('vectorfill.queue_seq') AS seq) n"""
        ).format(
            q=self.q,
            k=self._cols(),
            sk=sql.SQL(", ").join(sql.SQL("s.{}").format(c) for c in self.src_k),
            src=self.src,
        )

    # -- work
    def claim(self) -> sql.Composed:
        """Lease up to %(limit)s free queue rows; returns ``k1..kn, seq, attempts, last_error``.

        ``FOR UPDATE SKIP LOCKED`` lets any number of workers claim side by side without
        waiting on or double-claiming each other; the lease (``lease_until``) keeps the
        rows reserved after this short transaction commits, and expires by itself when a
        worker dies, so that another run takes the rows over. The UPDATE finds the picked
        rows by ``ctid`` (stable while they are locked): a join on the key let the planner
        choose a scan of the whole queue once its statistics saw it full (measured: 60 ms
        a claim at 200k queued rows, 5-10 ms with the Tid Scan).
        """
        return sql.SQL(
            """WITH picked AS (
                   SELECT ctid FROM {q}
                    WHERE lease_until IS NULL OR lease_until < now()
                    ORDER BY queued_at
                    LIMIT %(limit)s
                    FOR UPDATE SKIP LOCKED)
               UPDATE {q} AS q
                  SET lease_until = now() + make_interval(secs => %(lease_s)s),
                      claimed_by = %(token)s,
                      attempts = q.attempts + 1
                WHERE q.ctid = ANY(ARRAY(SELECT ctid FROM picked))
            RETURNING {qk}, q.seq, q.attempts, q.last_error"""
        ).format(q=self.q, qk=self._cols("q"))

    def read_texts(self, fields: tuple[str, ...] | list[str] = ()) -> sql.Composed:
        """The current text of claimed rows, whether the row still exists, the hashes of the
        inputs its stored chunks were made from (in chunk order), and the ``fields`` a chunk
        template names. Run after :meth:`claim` (fresh snapshot)."""
        src_match = self._src_match("c")
        return sql.SQL(
            """SELECT {ck}, c.seq, (s.ctid IS NOT NULL) AS present, {text} AS text, {hashes}{fields}
                 FROM {unnest}
                 LEFT JOIN {src} s ON {src_match}"""
        ).format(
            ck=self._cols("c"),
            text=text_expression(self.job, "s"),
            hashes=self._stored_hashes("c"),
            fields=self._fields(fields),
            unnest=self._unnest([("seq", "bigint")]),
            src=self.src,
            src_match=src_match,
        )

    def dequeue(self) -> sql.Composed:
        """Drop queue rows (still at their claimed seq) whose stored vector is already right."""
        return sql.SQL("DELETE FROM {q} q USING {unnest} WHERE {match} AND q.seq = c.seq").format(
            q=self.q, unnest=self._unnest([("seq", "bigint")]), match=self._match("q", "c")
        )

    def give_back(self) -> sql.Composed:
        """Give back claimed rows (still at their claimed seq and held by the run) to the
        queue at once, their attempt not counted, the reason noted: rows a claim took but
        did not read (a document job's claim over its byte bound, or one its store failed).
        Parameters: error, keys, seqs, run token."""
        return sql.SQL(
            """UPDATE {q} q SET lease_until = NULL, claimed_by = NULL,
                      attempts = greatest(q.attempts - 1, 0), last_error = %s
                 FROM {unnest}
                WHERE {match} AND q.seq = c.seq AND q.claimed_by = %s"""
        ).format(q=self.q, unnest=self._unnest([("seq", "bigint")]), match=self._match("q", "c"))

    def fail(self) -> sql.Composed:
        """Move rows (still at their claimed seq) from the queue to the failures table and
        drop their now-stale vectors. Parameters: keys, seqs, reasons, statuses, messages."""
        return sql.SQL(
            """WITH done AS (
                   DELETE FROM {q} q USING {unnest}
                    WHERE {match} AND q.seq = c.seq
                   RETURNING {ck}, c.reason, c.status, c.message, q.attempts),
               gone AS (DELETE FROM {v} v USING done WHERE {vmatch})
               INSERT INTO vectorfill.failures AS f
                      (job_id, version, row_key, reason, status, message, attempts, failed_at)
               SELECT %s, %s, {fkey}, done.reason, done.status, done.message, done.attempts, now()
                 FROM done
               ON CONFLICT (job_id, version, row_key) DO UPDATE
                  SET reason = EXCLUDED.reason, status = EXCLUDED.status,
                      message = EXCLUDED.message, attempts = f.attempts + EXCLUDED.attempts,
                      failed_at = EXCLUDED.failed_at"""
        ).format(
            q=self.q,
            unnest=self._unnest([("seq", "bigint"), ("reason", "text"), ("status", "integer"), ("message", "text")]),
            match=self._match("q", "c"),
            ck=self._cols("c"),
            v=self.v,
            vmatch=self._match("v", "done"),
            fkey=self._failure_key("done"),
        )

    def requeue_failures(self) -> sql.Composed:
        """Queue failed rows again (fresh seq, attempts reset) and clear their records: all of
        them, or those named by key (``ids``: single keys as text; ``rows``: JSON arrays)."""
        keys = sql.SQL(", ").join(
            sql.SQL("(f.row_key->>{})::{}").format(sql.Literal(i), t) for i, t in enumerate(self.types)
        )
        return sql.SQL(
            """WITH gone AS (
                   DELETE FROM vectorfill.failures f
                    WHERE f.job_id = %(job_id)s AND f.version = %(version)s
                      AND (%(all)s OR f.row_key = ANY(%(rows)s::jsonb[])
                           OR (jsonb_array_length(f.row_key) = 1 AND f.row_key->>0 = ANY(%(ids)s::text[])))
                   RETURNING f.row_key)
               INSERT INTO {q} ({k}, seq)
               SELECT {keys}, nextval('vectorfill.queue_seq') FROM gone f
               ON CONFLICT ({k}) DO UPDATE SET seq = EXCLUDED.seq, lease_until = NULL, claimed_by = NULL,
                   attempts = 0"""
        ).format(q=self.q, k=self._cols(), keys=keys)

    def renew(self) -> sql.Composed:
        """Extend the leases of every row the run ``%(token)s`` still holds (claimed, not yet
        stored, released or changed by a trigger, which all clear ``claimed_by``), so that a
        slice whose retries outlast the lease is not claimed and paid for by a second worker.
        A run that dies stops renewing and its leases expire as before."""
        return sql.SQL(
            """UPDATE {q} SET lease_until = now() + make_interval(secs => %(lease_s)s)
                WHERE claimed_by = %(token)s"""
        ).format(q=self.q)

    def release(self) -> sql.Composed:
        """Give back every row a run still holds (lease cleared, error noted) when it stops
        early. Parameters: error, run token."""
        return sql.SQL(
            """UPDATE {q} SET lease_until = NULL, claimed_by = NULL, last_error = %s
                WHERE claimed_by = %s"""
        ).format(q=self.q)

    # -- reading
    def counts(self) -> sql.Composed:
        """Exact counts: source rows, up-to-date vectors, queued rows, failed rows.

        Up-to-date vectors are counted as all vectors less those of queued rows (a semi-join
        from the queue), not as an anti-join of every vector against the queue: at a million
        vectors and 100,000 queued rows, 0.4-0.5 s instead of 0.7-1.3 s (under load)."""
        return sql.SQL(
            """SELECT (SELECT count(*) FROM {src}) AS total,
                      (SELECT count(*) FROM {v} v WHERE v.chunk_seq = 0)
                      - (SELECT count(*) FROM {q} q
                          WHERE EXISTS (SELECT 1 FROM {v} v WHERE {match} AND v.chunk_seq = 0)) AS embedded,
                      (SELECT count(*) FROM {q}) AS pending,
                      (SELECT count(*) FROM vectorfill.failures f
                        WHERE f.job_id = %(job_id)s AND f.version = %(version)s) AS failed"""
        ).format(src=self.src, v=self.v, q=self.q, match=self._match("q", "v"))

    def pending_texts(self, fields: tuple[str, ...] | list[str] = ()) -> sql.Composed:
        """The current text of every queued row and the hashes of its stored chunks' inputs
        (for estimates: no lease is taken, nothing changes), then the chunk template's fields."""
        return sql.SQL(
            """SELECT {text} AS text, {hashes}{fields}
                 FROM {q} q
                 JOIN {src} s ON {src_match}"""
        ).format(
            text=text_expression(self.job, "s"),
            hashes=self._stored_hashes("q"),
            fields=self._fields(fields),
            q=self.q,
            src=self.src,
            src_match=self._src_match("q"),
        )

    def all_texts(self, fields: tuple[str, ...] | list[str] = ()) -> sql.Composed:
        """The text of every source row (for the estimate of a re-embed with a new model)."""
        return sql.SQL("SELECT {text} AS text, NULL::bytea[]{fields} FROM {src} s").format(
            text=text_expression(self.job, "s"), fields=self._fields(fields), src=self.src
        )

    def missing(self) -> sql.Composed:
        """What keeps this version from being complete: rows still queued, and failed rows
        other than those with no text (which have no vector in any version)."""
        return sql.SQL(
            """SELECT (SELECT count(*) FROM {q}) AS pending,
                      (SELECT count(*) FROM vectorfill.failures f
                        WHERE f.job_id = %(job_id)s AND f.version = %(version)s
                          AND f.reason <> 'empty_text') AS failed"""
        ).format(q=self.q)


def refund_attempts(js: JobTables) -> sql.Composed:
    """Take back the attempt a run's claim counted on every row it still holds, when the run
    stops for a reason that is no row's fault (a refused request, a wrong key): rows that
    wait for a fixed setting never reach ``max_attempts`` for it. Parameter: run token."""
    return sql.SQL("UPDATE {q} SET attempts = greatest(attempts - 1, 0) WHERE claimed_by = %s AND attempts > 0").format(
        q=js.q
    )


WORK_LEFT_JOB = sql.SQL(
    """SELECT j.id,
              ARRAY(SELECT v.version FROM vectorfill.versions v
                     WHERE v.job_id = j.id AND v.state <> 'retired' ORDER BY v.version) AS versions,
              EXISTS (SELECT 1 FROM vectorfill.batches b
                       WHERE b.job_id = j.id AND b.state IN ('claiming', 'uploading', 'submitted')) AS batches_open,
              (SELECT count(*) FROM vectorfill.failures f JOIN vectorfill.versions v
                   ON v.job_id = f.job_id AND v.version = f.version AND v.state = 'active'
                WHERE f.job_id = j.id) AS failed
         FROM vectorfill.jobs j WHERE j.name = %(name)s"""
)
"""For :func:`work_left`: job ``%(name)s``'s id, its live versions, whether batches are
still open at the Batch API, and the failed rows of its active version; no row when there
is no such job."""


def work_left(job_id: int, versions: list[int]) -> sql.Composed:
    """Whether anything is queued for the job: a row, pending or leased, in one of the
    live versions' queues (``_q_<job id>_<version>``), or a change not yet absorbed in its
    change log (``_c_<job id>``). Each ``EXISTS`` reads at most one row; no lock beyond
    ``ACCESS SHARE``."""
    tables = [sql.Identifier(SCHEMA, f"_c_{job_id}")] + [sql.Identifier(SCHEMA, f"_q_{job_id}_{v}") for v in versions]
    return sql.SQL("SELECT ") + sql.SQL(" OR ").join(sql.SQL("EXISTS (SELECT 1 FROM {})").format(t) for t in tables)

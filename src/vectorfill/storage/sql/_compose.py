"""What every statement builder shares: the schema, text templates, and the names and
key-matching fragments of one job version's tables (:class:`JobTables`, the base of
:class:`~vectorfill.storage.sql.JobSQL`).

User-supplied names (schemas, tables, columns) only ever enter SQL as
:class:`psycopg.sql.Identifier`; values only as parameters. Column types are read from
``pg_catalog.format_type`` and re-used verbatim.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from psycopg import sql

from vectorfill.records import Job, Version

SCHEMA = "vectorfill"
S = sql.Identifier(SCHEMA)


# ----------------------------------------------------------------- text templates
@dataclass(frozen=True)
class TextSpec:
    """What text a job embeds: literal parts and column fields, in order."""

    parts: tuple[tuple[str, str | None], ...]  # (literal, column or None)
    columns: tuple[str, ...]


def parse_template(template: str) -> TextSpec:
    """``"{title}\\n\\n{body}"`` -> literal/column parts. Only bare ``{column}`` fields."""
    parts: list[tuple[str, str | None]] = []
    columns: list[str] = []
    for literal, field, spec, conv in string.Formatter().parse(template):
        if spec or conv:
            raise ValueError(f"template field {{{field}}} may not use format specs or conversions")
        if field is not None and not field:
            raise ValueError("template has an empty field {}; name a column inside the braces")
        parts.append((literal, field))
        if field and field not in columns:
            columns.append(field)
    if not columns:
        raise ValueError("template names no column; use {column} fields")
    return TextSpec(tuple(parts), tuple(columns))


def text_expression(job: Job, alias: str = "s") -> sql.Composed:
    """The SQL expression that renders a source row's text (NULL when every field is NULL);
    a document job's row's document URI."""
    a = sql.Identifier(alias)
    if job.settings.documents is not None:  # a document job: the URI (its other columns are watched only)
        return sql.SQL("{}.{}::text").format(a, sql.Identifier(job.settings.documents.uri))
    if job.template is None:
        cols = [sql.SQL("{}.{}::text").format(a, sql.Identifier(c)) for c in job.text_columns]
        if len(cols) == 1:
            return cols[0]
        return sql.SQL("NULLIF(concat_ws(E'\\n\\n', {}), '')").format(sql.SQL(", ").join(cols))
    spec = parse_template(job.template)
    pieces: list[sql.Composable] = []
    for literal, column in spec.parts:
        if literal:
            pieces.append(sql.Literal(literal))
        if column:
            pieces.append(sql.SQL("coalesce({}.{}::text, '')").format(a, sql.Identifier(column)))
    all_null = sql.SQL(" AND ").join(sql.SQL("{}.{} IS NULL").format(a, sql.Identifier(c)) for c in spec.columns)
    return sql.SQL("CASE WHEN {} THEN NULL ELSE concat({}) END").format(all_null, sql.SQL(", ").join(pieces))


class JobTables:
    """The names of one job version's tables and the fragments that match their keys; the
    statements are :class:`~vectorfill.storage.sql.JobSQL`'s (queue and vector families)."""

    def __init__(self, job: Job, version: Version) -> None:
        self.job = job
        self.version = version
        self.src = sql.Identifier(job.source_schema, job.source_table)
        self.q = sql.Identifier(SCHEMA, version.queue_table)
        self.v = sql.Identifier(SCHEMA, version.vector_table)
        self.n = len(job.key_columns)
        self.k = [sql.Identifier(f"k{i + 1}") for i in range(self.n)]
        self.src_k = [sql.Identifier(c) for c in job.key_columns]
        self.types = [sql.SQL(t) for t in job.key_types]  # from pg_catalog.format_type

    # -- helpers
    def _cols(self, alias: str | None = None) -> sql.Composed:
        if alias is None:
            return sql.SQL(", ").join(self.k)
        return sql.SQL(", ").join(sql.Identifier(alias, f"k{i + 1}") for i in range(self.n))

    def _match(self, left: str, right: str, right_cols: list[sql.Identifier] | None = None) -> sql.Composed:
        rk = right_cols or self.k
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), lk, sql.Identifier(right), r)
            for lk, r in zip(self.k, rk, strict=True)
        )

    def _unnest(self, extra: list[tuple[str, str]], alias: str = "c") -> sql.Composed:
        """``unnest(%s::t1[], ..., %s::extra[]) AS c(k1, ..., extra)`` for array parameters."""
        arrays = [sql.SQL("%s::{}[]").format(t) for t in self.types]
        arrays += [sql.SQL("%s::{}[]").format(sql.SQL(t)) for _, t in extra]
        names = self.k + [sql.Identifier(name) for name, _ in extra]
        return sql.SQL("unnest({}) AS {}({})").format(
            sql.SQL(", ").join(arrays), sql.Identifier(alias), sql.SQL(", ").join(names)
        )

    def _src_match(self, other: str) -> sql.Composed:
        """``s.<key col> = <other>.k1 AND ...``: the source row of a queue/vector row."""
        return sql.SQL(" AND ").join(
            sql.SQL("s.{} = {}.{}").format(sc, sql.Identifier(other), k)
            for sc, k in zip(self.src_k, self.k, strict=True)
        )

    def _failure_key(self, alias: str) -> sql.Composed:
        return sql.SQL("jsonb_build_array({})").format(self._cols(alias))

    def _stored_hashes(self, alias: str) -> sql.Composed:
        """The input hashes of a row's stored chunks, in order (NULL: no vector)."""
        return sql.SQL("(SELECT array_agg(v.input_hash ORDER BY v.chunk_seq) FROM {v} v WHERE {m})").format(
            v=self.v, m=self._match("v", alias)
        )

    def _fields(self, columns: tuple[str, ...] | list[str]) -> sql.Composed:
        return sql.SQL("").join(sql.SQL(", s.{}::text").format(sql.Identifier(c)) for c in columns)

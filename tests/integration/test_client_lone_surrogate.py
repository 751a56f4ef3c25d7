"""The embeddings client refuses a text with a lone surrogate as an input error, not a crash;
the text comes from a real Postgres row."""

from __future__ import annotations

import pytest

from client_helpers import ok, run


def test_a_lone_surrogate_is_a_clear_input_error_not_a_crash(fresh_db):
    from vectorfill.errors import InputError

    sent = []
    with pytest.raises(InputError, match=r"input #1 contains a lone UTF-16 surrogate") as info:
        run(lambda request: sent.append(request) or ok([[1.0], [1.0]]), texts=("fine", "bad \ud800 text"))
    assert info.value.row == 1 and not sent, "nothing is sent"
    # and the source can never hold one: Postgres refuses it (here through psycopg, which
    # cannot even encode it, and as an escape in SQL)
    import psycopg

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
        with pytest.raises(UnicodeEncodeError):
            conn.execute("INSERT INTO t VALUES (1, %s)", ("bad \ud800",))
        with pytest.raises(psycopg.errors.SyntaxError, match="invalid Unicode surrogate pair"):
            conn.execute("INSERT INTO t VALUES (1, U&'bad \\D800')")

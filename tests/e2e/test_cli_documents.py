"""Document jobs through the `vectorfill` command: a folder synced, a job on its table,
a backfill, the failures listed with the URI and the reason; a second sync writes nothing."""

from __future__ import annotations

import pytest

import document_helpers as make
from cli_helpers import user_env, vf
from vectorfill.storage.db import connect

pytestmark = pytest.mark.slow


def test_a_folder_synced_embedded_and_its_bad_documents_listed_through_the_cli(
    fresh_db, provider, tmp_path, local_prefect_home
):
    env = {**user_env(fresh_db, tmp_path, local_prefect_home), "COLUMNS": "400"}  # no wrapped lines
    folder = tmp_path / "library"
    folder.mkdir()
    (folder / "guide.docx").write_bytes(make.docx(make.paragraphs(10, seed=4)))
    (folder / "page.html").write_bytes(make.html("Welcome", make.paragraphs(4, seed=5)))
    (folder / "scan.pdf").write_bytes(make.scanned_pdf())
    vf("migrate", env=env)

    out = vf("documents", "sync", str(folder), "--table", "library", env=env).stdout
    assert "3 objects listed" in out and "3 added" in out
    out = vf(
        "job", "create", "lib", "--table", "library", "--uri", "uri", "--model", "fake-embed",
        "--base-url", provider.base_url, "--api-key-env", "VF_KEY", "--chunk-size", "80", env=env,
    ).stdout  # fmt: skip
    assert "3 rows of public.library queued" in out
    done = vf("backfill", "lib", env=env, check=False)
    assert done.returncode == 3, done.stdout + done.stderr  # finished, with a failed row
    failures = vf("failures", "lib", env=env).stdout
    assert "no_text_layer" in failures and f"{folder / 'scan.pdf'}: scanned: no text layer" in failures

    with connect(fresh_db) as conn:
        chunks = conn.execute("SELECT count(*), count(DISTINCT id) FROM vectorfill.lib").fetchone()
        xmins = conn.execute("SELECT array_agg(xmin::text ORDER BY id) FROM library").fetchone()
    assert chunks[1] == 2 and chunks[0] > 2  # two documents, chunked
    out = vf("documents", "sync", str(folder), "--table", "library", env=env).stdout
    assert "0 added, 0 changed, 0 renamed, 0 deleted" in out
    with connect(fresh_db) as conn:
        assert conn.execute("SELECT array_agg(xmin::text ORDER BY id) FROM library").fetchone() == xmins

    bad = vf("job", "create", "x", "--table", "library", "--uri", "nope", "--model", "m", "--base-url",
             provider.base_url, "--no-check", env=env, check=False)  # fmt: skip
    assert bad.returncode == 1 and "no column 'nope'" in bad.stdout + bad.stderr

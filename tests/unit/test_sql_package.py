"""vectorfill.storage.sql is one face over one module per table family."""

from pathlib import Path

from vectorfill.storage import sql


def test_every_exported_name_exists_and_every_public_statement_is_exported():
    for name in sql.__all__:
        assert hasattr(sql, name), name
    public = {n for n in vars(sql) if n.isupper() and not n.startswith("_")}
    assert public <= set(sql.__all__)
    assert len(set(sql.__all__)) == len(sql.__all__)


def test_job_sql_joins_the_queue_and_vector_families():
    assert issubclass(sql.JobSQL, sql.JobTables)
    for method in ("claim", "read_texts", "fail", "renew", "release", "counts", "settle", "copy_vectors", "search"):
        assert callable(getattr(sql.JobSQL, method)), method


def test_each_module_is_one_a_person_can_hold():
    folder = Path(sql.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert len(sizes) >= 8 and all(n < 400 for n in sizes.values()), sizes

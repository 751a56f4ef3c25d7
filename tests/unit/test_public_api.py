"""The public face is small and said out loud."""

import vectorfill
import vectorfill.errors
import vectorfill.tasks


def test_top_level_names_are_exactly_these():
    assert sorted(vectorfill.__all__) == sorted(
        [
            "__version__",
            "EmbeddingsClient",
            "Embeddings",
            "JobSettings",
            "VectorfillError",
            "ConfigError",
            "SecretMissing",
            "JobError",
            "SourceError",
            "DatabaseError",
            "ProviderError",
            "TransientProviderError",
            "TerminalProviderError",
            "AuthenticationError",
            "ModelNotFound",
            "QuotaExceeded",
            "InputError",
        ]
    )
    for name in vectorfill.__all__:
        assert hasattr(vectorfill, name), name


def test_every_error_is_marked_transient_or_terminal_and_exported():
    for name in vectorfill.errors.__all__:
        obj = getattr(vectorfill.errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, vectorfill.errors.VectorfillError)
            assert isinstance(obj.transient, bool)
    assert vectorfill.errors.TransientProviderError.transient
    assert not vectorfill.errors.AuthenticationError.transient


def test_stage_tasks_are_the_published_ones():
    assert {
        "prepare_run",
        "fill_slice",
        "claim_rows",
        "embed_request",
        "store_vectors",
        "switch_versions",
        "report_run",
        "release_rows",
    } <= set(vectorfill.tasks.__all__)

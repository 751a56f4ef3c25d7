"""A flow run's plain parameters are sent as they are, without Prefect's FastAPI encoder."""

from __future__ import annotations

from vectorfill.tasks.common import plain_parameters


def test_plain_parameters_go_as_they_are_and_others_through_prefects():
    seen = []

    def prefects(parameters):
        seen.append(parameters)
        return {k: str(v) for k, v in parameters.items()}

    serialize = plain_parameters(prefects)
    plain = {"job": "docs", "max_rows": None, "batch": False, "poll_s": 30.0, "run_part": "w1"}
    assert serialize(plain) == plain and not seen
    assert serialize({"job": "docs", "when": object}) == {"job": "docs", "when": str(object)} and len(seen) == 1


def test_the_backfill_flow_sends_its_parameters_without_fastapi():
    import sys

    from vectorfill.flows.backfill import backfill

    already = "fastapi.encoders" in sys.modules
    assert backfill.serialize_parameters({"job": "docs", "max_rows": 10}) == {"job": "docs", "max_rows": 10}
    assert already or "fastapi.encoders" not in sys.modules

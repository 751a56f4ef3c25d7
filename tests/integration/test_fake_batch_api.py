"""The fake provider's Files and Batches endpoints, held to the real ``openai`` client, and
vectorfill's Batch API client (provider/batches.py) against them."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import openai
import pytest
from pydantic import SecretStr

from conftest import API_KEY
from fake_provider import FakeProvider
from vectorfill.errors import AuthenticationError, TerminalProviderError
from vectorfill.provider.batches import BatchesClient, failure_code, parse_lines, request_line


@pytest.fixture
def fake():
    with FakeProvider(dimensions=16, api_key=API_KEY) as p:
        p.batch_api.stage_s = 0.05
        yield p


def _jsonl(lines: list[tuple[str, list[str]]], model: str = "fake-embed") -> bytes:
    return b"".join(
        request_line(cid, {"model": model, "input": texts, "encoding_format": "float"}) for cid, texts in lines
    )


def _wait(client: openai.OpenAI, batch_id: str, seen: list[str], timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != b.status:
            seen.append(b.status)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        assert time.monotonic() < deadline, f"batch stuck in {b.status}"
        time.sleep(0.02)


def test_the_openai_client_runs_a_batch_against_the_fake(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    now = [0.0]
    fake.batch_api.clock = lambda: now[0]  # the batch's time, moved by hand: no race with a poll
    texts = [[f"text {i}-{j}" for j in range(3)] for i in range(20)]
    f = client.files.create(file=("in.jsonl", _jsonl([(f"r{i}", t) for i, t in enumerate(texts)])), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h", metadata={"vectorfill_job": "docs"}
    )
    assert b.status == "validating" and b.metadata == {"vectorfill_job": "docs"}
    seen = []
    for _ in range(4):  # one stage at a time: statuses move with time, one after the other
        seen.append(client.batches.retrieve(b.id).status)
        now[0] += fake.batch_api.stage_s
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    b = client.batches.retrieve(b.id)
    assert b.request_counts.completed == 20 and b.request_counts.failed == 0
    assert b.error_file_id is None
    lines = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in lines] != [f"r{i}" for i in range(20)], "output comes in no order"
    by_id = {x["custom_id"]: x for x in lines}
    for i, t in enumerate(texts):
        body = by_id[f"r{i}"]["response"]["body"]
        assert by_id[f"r{i}"]["response"]["status_code"] == 200
        got = np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])], dtype=np.float32)
        want = np.stack([fake.expected_vector(x) for x in t])
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert fake.batch_api.submitted_inputs == 60 and fake.batch_api.billed_inputs == 60
    listed = client.batches.list(limit=1)
    assert [x.id for x in listed.data] == [b.id]


def test_failed_lines_go_to_the_error_file(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    fake.batch_api.fail_lines_when(lambda t: "bad" in t, status=400)
    f = client.files.create(file=("in.jsonl", _jsonl([("a", ["good"]), ("b", ["bad one"])])), purpose="batch")
    b = _wait(
        client, client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b.status == "completed" and b.request_counts.completed == 1 and b.request_counts.failed == 1
    err = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert err[0]["custom_id"] == "b" and err[0]["response"]["status_code"] == 400
    assert fake.batch_api.billed_inputs == 1


def test_expiry_returns_partial_results_and_batch_expired_errors(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    fake.batch_api.expire_next(0.5)
    f = client.files.create(file=("in.jsonl", _jsonl([(f"r{i}", [f"t{i}"]) for i in range(10)])), purpose="batch")
    b = _wait(
        client, client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b.status == "expired"
    out = client.files.content(b.output_file_id).text.splitlines()
    err = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert len(out) == 5 and len(err) == 5
    assert {e["error"]["code"] for e in err} == {"batch_expired"} and all(e["response"] is None for e in err)


def test_validation_failures_and_limits(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    fake.batch_api.max_inputs = 10
    f = client.files.create(file=("in.jsonl", _jsonl([("a", [f"t{i}" for i in range(11)])])), purpose="batch")
    b = _wait(
        client, client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b.status == "failed" and b.errors.data[0].code == "too_many_tasks"
    assert fake.batch_api.submitted_inputs == 0
    bad = client.files.create(file=("in.jsonl", b'{"custom_id": "x", "url": "/v1/embeddings"\n'), purpose="batch")
    b = _wait(
        client, client.batches.create(input_file_id=bad.id, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b.status == "failed" and b.errors.data[0].code == "invalid_json_line" and b.errors.data[0].line == 1
    fake.batch_api.max_file_bytes = 100
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", _jsonl([("a", ["x" * 200])])), purpose="batch")


def test_token_limit_exceeded_while_other_batches_are_enqueued(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    fake.batch_api.token_limit = 10
    fake.batch_api.hold_next()
    f1 = client.files.create(file=("a.jsonl", _jsonl([("a", ["one two three four five six"])])), purpose="batch")
    b1 = client.batches.create(input_file_id=f1.id, endpoint="/v1/embeddings", completion_window="24h")
    time.sleep(0.1)
    assert client.batches.retrieve(b1.id).status == "in_progress"
    f2 = client.files.create(file=("b.jsonl", _jsonl([("b", ["seven eight nine ten eleven twelve"])])), purpose="batch")
    b2 = _wait(
        client, client.batches.create(input_file_id=f2.id, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b2.status == "failed" and b2.errors.data[0].code == "token_limit_exceeded"
    fake.batch_api.release()
    assert _wait(client, b1.id, []).status == "completed"


def test_cancel_moves_through_cancelling_to_cancelled(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    fake.batch_api.hold_next()
    f = client.files.create(file=("a.jsonl", _jsonl([(f"r{i}", [f"t{i}"]) for i in range(4)])), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    time.sleep(0.1)
    assert client.batches.cancel(b.id).status == "cancelling"
    b = _wait(client, b.id, [])
    assert b.status == "cancelled" and b.request_counts.completed == 2  # half done when cancelled


def test_vectorfill_batches_client_round_trip_and_paged_list(fake):
    async def main():
        async with BatchesClient(base_url=fake.base_url, api_key=SecretStr(API_KEY), job="docs") as c:
            ids = []
            for n in range(3):
                fid = await c.upload(_jsonl([(f"r{n}", [f"text {n}"])]))
                ids.append((await c.create(fid, {"vectorfill_submission": str(n)})).id)
            listed = [b async for b in c.list(page_size=2)]
            assert [b.id for b in listed] == ids[::-1]
            assert [b.metadata["vectorfill_submission"] for b in listed] == ["2", "1", "0"]
            while (b := await c.retrieve(ids[0])).status != "completed":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            lines = parse_lines(await c.content(b.output_file_id))
            assert lines[0].ok and lines[0].custom_id == "r0" and failure_code(b) is None
            with pytest.raises(TerminalProviderError):
                await c.retrieve("batch_nope")
        async with BatchesClient(base_url=fake.base_url, api_key=SecretStr("sk-wrong"), job="docs") as c:
            with pytest.raises(AuthenticationError) as info:
                await c.upload(b"{}\n")
            assert "sk-wrong" not in str(info.value)

    asyncio.run(main())


def _raw_file(client: openai.OpenAI, lines: list) -> str:
    """An input file of these lines (dicts as JSON, strings as they are), uploaded."""
    content = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()
    return client.files.create(file=("in.jsonl", content), purpose="batch").id


def _line(cid: str, **changes) -> dict:
    """A valid request line, with ``changes`` (a field set to None is left out)."""
    line = {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "fake-embed", "input": ["t"]},
    }
    for key, value in changes.items():
        if value is None:
            line.pop(key)
        else:
            line[key] = value
    return line


def test_a_file_a_real_batch_api_refuses_fails_validation_line_by_line_as_openai_says(fake):
    """Each line needs a unique ``custom_id``, ``method`` POST, the batch's ``url`` and a
    ``body`` with ``model`` and ``input``: OpenAI fails the whole batch at validation, with a
    code, the line and the parameter for each fault, and runs (and bills) none of it."""
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    fid = _raw_file(
        client,
        [
            _line("a"),
            _line("b", custom_id=None),
            _line("c", method=None),
            _line("d", url=None),
            _line("e", body=None),
            _line("a"),  # a custom_id seen on line 1
            _line("g", method="GET"),
            _line("h", url="/v1/chat/completions"),
            _line("i", body={"model": "fake-embed"}),
            _line("j", body={"input": ["t"]}),
            _line("k", custom_id=7),
            "{not json",
        ],
    )
    b = _wait(
        client, client.batches.create(input_file_id=fid, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b.status == "failed" and b.failed_at is not None
    assert [(e.code, e.line, e.param) for e in b.errors.data] == [
        ("missing_required_parameter", 2, "custom_id"),
        ("missing_required_parameter", 3, "method"),
        ("missing_required_parameter", 4, "url"),
        ("missing_required_parameter", 5, "body"),
        ("duplicate_custom_id", 6, "custom_id"),
        ("invalid_request", 7, "method"),
        ("invalid_url", 8, "url"),
        ("invalid_request", 9, "body.input"),
        ("invalid_request", 10, "body.model"),
        ("invalid_request", 11, "custom_id"),
        ("invalid_json_line", 12, None),
    ]
    assert b.errors.data[0].message == "Missing required parameter: 'custom_id'."
    assert "does not match the batch endpoint" in b.errors.data[6].message
    assert b.output_file_id is None and b.error_file_id is None
    assert fake.batch_api.submitted_inputs == 0 and fake.batch_api.billed_inputs == 0


def test_a_batch_is_for_one_model_the_provider_serves(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    mixed = _raw_file(client, [_line("a"), _line("b", body={"model": "other-embed", "input": ["t"]})])
    b = _wait(
        client, client.batches.create(input_file_id=mixed, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b.status == "failed" and [(e.code, e.line, e.param) for e in b.errors.data] == [
        ("mismatched_model", 2, "body.model")
    ]
    unknown = _raw_file(client, [_line("a", body={"model": "no-such-model", "input": ["t"]})])
    b = _wait(
        client, client.batches.create(input_file_id=unknown, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b.status == "failed" and [(e.code, e.line, e.param) for e in b.errors.data] == [
        ("model_not_found", 1, "body.model")
    ]
    assert fake.batch_api.billed_inputs == 0


def test_an_unknown_endpoint_is_refused_at_creation_with_openais_error(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    fid = _raw_file(client, [_line("a")])
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=fid, endpoint="/v1/nowhere", completion_window="24h")  # type: ignore[arg-type]
    error = info.value.body
    assert (
        error["code"] == "invalid_value" and error["param"] == "endpoint" and "Supported values are" in error["message"]
    )
    assert fake.batch_api.created == 0


def test_what_vectorfill_writes_is_a_file_the_strict_fake_accepts(fake):
    """The other side of the strictness: vectorfill's own lines (provider/batches.py) pass."""
    client = openai.OpenAI(base_url=fake.base_url, api_key=API_KEY)
    fid = client.files.create(
        file=("in.jsonl", _jsonl([("r1", ["one"]), ("r2", ["two", "three"])])), purpose="batch"
    ).id
    b = _wait(
        client, client.batches.create(input_file_id=fid, endpoint="/v1/embeddings", completion_window="24h").id, []
    )
    assert b.status == "completed" and b.errors is None and b.request_counts.completed == 2

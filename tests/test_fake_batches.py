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
    texts = [[f"text {i}-{j}" for j in range(3)] for i in range(20)]
    f = client.files.create(file=("in.jsonl", _jsonl([(f"r{i}", t) for i, t in enumerate(texts)])), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h", metadata={"vectorfill_job": "docs"}
    )
    assert b.status == "validating" and b.metadata == {"vectorfill_job": "docs"}
    seen = ["validating"]
    b = _wait(client, b.id, seen)
    assert seen == ["validating", "in_progress", "finalizing", "completed"] or seen[-1] == "completed"
    assert "in_progress" in seen or "finalizing" in seen  # statuses over time, not at once
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

"""Refusals read for what they are about: each real server's error bodies (as the fake
provider's ``behave_like`` answers them) tell a refused request from a refused input, and
FastAPI's 422 names the field (through the real flow: test_negotiate.py)."""

from __future__ import annotations

import pytest

# ------------------------------------------------------------------ reading refusals (no server)


def _refusal(status: int, body, content_type: str = "application/json"):
    import httpx
    import orjson

    from vectorfill.provider.client import EmbeddingsClient

    content = body.encode() if isinstance(body, str) else orjson.dumps(body)
    response = httpx.Response(status, content=content, headers={"content-type": content_type})
    client = EmbeddingsClient(base_url="http://127.0.0.1:9/v1", model="m")
    return client._error(response)


@pytest.mark.parametrize(
    "status, body, kind, cap",
    [
        (
            413,
            {"message": "batch size 64 > maximum allowed batch size 32", "code": 413, "error_type": "validation"},
            "inputs_cap",
            32,
        ),  # TEI
        (
            400,
            {
                "error": {
                    "message": "Too many inputs. The max number of inputs is 16.  We hope to increase the "
                    "number of inputs per request soon.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            "inputs_cap",
            16,
        ),  # Azure OpenAI
        (
            400,
            {
                "error": {
                    "message": "Requested 400000 tokens, max 300000 tokens per request",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "max_tokens_per_request",
                }
            },
            "tokens_cap",
            300000,
        ),  # OpenAI
        (
            422,
            "Failed to deserialize the JSON body into the target type: encoding_format: unknown variant `base64`, "
            "expected `float` at line 1 column 40",
            "encoding",
            None,
        ),  # TEI before base64
        (
            422,
            {
                "detail": [
                    {
                        "type": "literal_error",
                        "loc": ["body", "encoding_format"],
                        "msg": "Input should be 'float'",
                        "input": "base64",
                    }
                ]
            },
            "encoding",
            None,
        ),  # Infinity (FastAPI)
        (
            400,
            {
                "error": {
                    "message": "This model does not support specifying dimensions.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            "dimensions",
            None,
        ),  # OpenAI
        (
            400,
            {
                "object": "error",
                "message": 'Model "m" does not support matryoshka representation, changing output '
                "dimensions will lead to poor results.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            "dimensions",
            None,
        ),  # vLLM (older top-level shape)
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 512 tokens. However, you requested 600 "
                    "tokens in the input for embedding generation. Please reduce the length of the input.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            },
            "too_long",
            None,
        ),  # vLLM
        (
            413,
            {
                "message": "Input validation error: `inputs` must have less than 512 tokens. Given: 600",
                "code": 413,
                "error_type": "validation",
            },
            "too_long",
            None,
        ),  # TEI, input too long
        (413, "<html><head><title>413 Request Entity Too Large</title></head></html>", "size", None),  # nginx
        (
            400,
            {
                "error": {
                    "message": "input[3] was refused",
                    "type": "invalid_request_error",
                    "param": "input[3]",
                    "code": None,
                }
            },
            "other",
            None,
        ),
    ],
)
def test_refusals_of_each_server_are_read_for_what_they_are_about(status, body, kind, cap):
    from vectorfill.provider.negotiate import classify

    exc = _refusal(status, body, "text/html" if isinstance(body, str) and body.startswith("<") else "application/json")
    refusal = classify(exc)
    assert (refusal.kind, refusal.cap) == (kind, cap), str(exc)


def test_fastapi_422_names_the_field_as_param():
    exc = _refusal(422, {"detail": [{"type": "literal_error", "loc": ["body", "encoding_format"], "msg": "bad"}]})
    assert exc.param == "encoding_format" and "body.encoding_format: bad" in str(exc)


# ------------------------------------------------------------------ vectorfill check (the library)

"""Every server's error body becomes the vectorfill error that says whether to retry, stop
the run, or blame an input: OpenAI's ``{"error": {message, type, param, code}}``, and what
TEI, vLLM, Infinity (FastAPI), Azure and gateways send instead."""

from __future__ import annotations

import email.utils
import time

import httpx
import orjson
import pytest

from fake_provider import VARIANTS
from mock_endpoint import KEY, embed, from_fake, openai_error
from vectorfill.errors import (
    AuthenticationError,
    ModelNotFound,
    ProviderError,
    QuotaExceeded,
    TerminalProviderError,
    TransientProviderError,
    is_transient,
    stops_run,
)


def refused(response: httpx.Response, **kw) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        embed(lambda request: response, **kw)
    return info.value


def test_a_401_is_an_authentication_error_that_stops_the_run_and_names_the_key_variable():
    exc = refused(openai_error(401, "Incorrect API key provided.", code="invalid_api_key"), key_hint="VF_KEY")
    assert type(exc) is AuthenticationError and stops_run(exc) and not is_transient(exc)
    assert (exc.status, exc.code) == (401, "invalid_api_key")
    assert "Incorrect API key provided." in str(exc) and "$VF_KEY" in str(exc)


def test_a_403_is_an_authentication_error_too():
    assert type(refused(openai_error(403, "You are not allowed to use this model"))) is AuthenticationError


def test_a_404_for_the_model_is_model_not_found_naming_the_model_and_the_base_url():
    exc = refused(openai_error(404, "The model `m` does not exist", code="model_not_found"))
    assert type(exc) is ModelNotFound and stops_run(exc)
    assert "model 'm'" in str(exc) and "--base-url" in str(exc) and exc.code == "model_not_found"


def test_a_429_rate_limit_is_transient_with_the_retry_after_it_carries():
    exc = refused(
        openai_error(429, "Rate limit reached for requests", code="rate_limit_exceeded", headers={"Retry-After": "7"})
    )
    assert type(exc) is TransientProviderError and is_transient(exc) and not stops_run(exc)
    assert exc.retry_after == 7.0 and exc.code == "rate_limit_exceeded"


def test_a_429_retry_after_given_as_an_http_date_is_seconds_from_now():
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    exc = refused(openai_error(429, "slow down", headers={"retry-after": when}))
    assert exc.retry_after is not None and 3590 <= exc.retry_after <= 3600


def test_a_429_without_retry_after_leaves_the_wait_to_the_caller():
    assert refused(openai_error(429, "slow down")).retry_after is None


@pytest.mark.parametrize(
    "code, type_",
    [("insufficient_quota", "insufficient_quota"), ("insufficient_quota", None), (None, "insufficient_quota")],
)
def test_a_429_insufficient_quota_is_billing_not_a_rate_limit_and_stops_the_run(code, type_):
    exc = refused(openai_error(429, "You exceeded your current quota", code=code, type_=type_))
    assert type(exc) is QuotaExceeded and stops_run(exc) and not is_transient(exc)
    assert "out of quota" in str(exc)


def test_a_400_naming_the_dimensions_param_is_terminal_and_keeps_the_param():
    exc = refused(openai_error(400, "Invalid value for dimensions", param="dimensions"), dimensions=16)
    assert type(exc) is TerminalProviderError and not stops_run(exc), "the negotiator decides, not the client"
    assert exc.param == "dimensions" and exc.status == 400


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504])
def test_timeouts_conflicts_and_server_errors_are_transient(status):
    assert type(refused(openai_error(status, "try again", type_="server_error"))) is TransientProviderError


# ------------------------------------------------------------------ other servers' shapes


def test_tei_message_code_error_type_body_is_read():
    fake = VARIANTS["tei"](max_client_batch_size=32).refuse_batch(64, 32)
    exc = refused(from_fake(fake))
    assert type(exc) is TerminalProviderError and exc.status == 413
    assert "batch size 64 > maximum allowed batch size 32" in str(exc) and exc.code == "413"


def test_tei_plain_text_422_is_quoted_as_the_message():
    fake = VARIANTS["tei"](base64=False).refuse_base64({"model": "m", "input": ["a"], "encoding_format": "base64"})
    exc = refused(from_fake(fake))
    assert exc.status == 422 and "unknown variant `base64`" in str(exc) and "non-JSON body" in str(exc)


def test_tei_error_string_with_error_type_is_read():
    response = httpx.Response(
        424, json={"error": "Input validation error: inputs cannot be empty", "error_type": "Validation"}
    )
    exc = refused(response)
    assert type(exc) is TerminalProviderError
    assert "inputs cannot be empty" in str(exc) and "{" not in str(exc).split(": ", 1)[1]


def test_fastapi_detail_list_names_the_field_as_param():
    fake = VARIANTS["infinity"]().refuse_base64({"encoding_format": "base64"})
    exc = refused(from_fake(fake))
    assert exc.status == 422 and exc.param == "encoding_format"
    assert "body.encoding_format: Input should be 'float'" in str(exc)


def test_fastapi_detail_string_is_the_message():
    exc = refused(httpx.Response(404, json={"detail": "Not Found"}))
    assert type(exc) is ModelNotFound and "Not Found" in str(exc)


@pytest.mark.parametrize("variant", ["openai", "vllm", "litellm"])
def test_dimension_refusals_of_openai_vllm_and_litellm_keep_the_servers_words(variant):
    fake = VARIANTS[variant]().refuse_dimensions({"model": "m", "dimensions": 16})
    words = orjson.loads(fake.body)["error"]["message"]
    exc = refused(from_fake(fake), dimensions=16)
    assert type(exc) is TerminalProviderError and exc.status == 400
    assert str(exc).endswith(f"rejected the request (400): {words}"), str(exc)


def test_vllm_top_level_error_object_is_read():
    response = httpx.Response(
        404, json={"object": "error", "message": "The model `m` does not exist.", "type": "NotFoundError", "code": 404}
    )
    exc = refused(response)
    assert type(exc) is ModelNotFound and "The model `m` does not exist." in str(exc) and exc.code == "404"


def test_azure_error_code_and_message_are_read():
    response = httpx.Response(
        404,
        json={
            "error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}
        },
    )
    exc = refused(response)
    assert type(exc) is ModelNotFound and exc.code == "DeploymentNotFound"
    assert "deployment for this resource does not exist" in str(exc)


def test_a_gateway_html_page_is_quoted_and_a_5xx_one_is_transient():
    exc = refused(httpx.Response(502, html="<html><body><h1>502 Bad Gateway</h1></body></html>"))
    assert type(exc) is TransientProviderError
    assert "non-JSON body, content-type text/html" in str(exc) and "502 Bad Gateway" in str(exc)


def test_a_key_echoed_in_any_field_of_the_body_is_scrubbed():
    response = httpx.Response(400, json={"detail": [{"loc": ["body", "input"], "msg": f"bad key {KEY}"}]})
    exc = refused(response)
    assert KEY not in str(exc) and "***" in str(exc)


def test_a_200_carrying_an_error_object_is_not_taken_for_vectors():
    response = httpx.Response(200, json={"object": "error", "message": "model is loading", "code": 503})
    exc = refused(response)
    assert type(exc) is TransientProviderError and exc.code == "bad_response"

"""A real S3 API on loopback for the tests: moto's server (``moto[server]``) behind a small
WSGI layer that injects the store's faults a test scripts (a 503, access denied).

    with FakeS3() as s3:
        s3.client().put_object(Bucket="b", Key="a.pdf", Body=data)
        s3.fail("a.pdf", status=503, code="SlowDown", times=2)
        s3.deny("secret.pdf")

``env()`` is the environment boto3 needs to reach it (``AWS_ENDPOINT_URL`` and keys).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>fake</RequestId></Error>"
)


@dataclass
class Fault:
    status: int
    code: str
    times: int | None  # None: always


class FakeS3:
    def __init__(self) -> None:
        self.faults: dict[str, Fault] = {}
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- scripting
    def fail(self, key: str, *, status: int = 503, code: str = "SlowDown", times: int | None = 1) -> None:
        """The next ``times`` GETs of ``key`` (None: every one) answer ``status``/``code``."""
        with self._lock:
            self.faults[key] = Fault(status, code, times)

    def deny(self, key: str) -> None:
        self.fail(key, status=403, code="AccessDenied", times=None)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    # -- the server
    def __enter__(self) -> FakeS3:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        class Quiet(MotoRequestHandler):
            def log_request(self, *args: object) -> None:
                pass

        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._wsgi(app), True, request_handler=Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.reset()
        return self

    def reset(self) -> None:
        """Forget every bucket: moto's backends live in the process, not in the server, so
        a second server in the same process would see the first one's objects."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10)

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        assert self._thread is not None
        self._thread.join(10)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def _wsgi(self, app: Any) -> Any:
        def handle(environ: dict[str, Any], start_response: Any) -> Any:
            path = unquote(environ.get("PATH_INFO", ""))
            if environ.get("REQUEST_METHOD") == "GET" and path.count("/") >= 2:
                key = path.split("/", 2)[2]
                with self._lock:
                    self.gets[key] += 1
                    fault = self.faults.get(key)
                    if fault is not None and fault.times is not None:
                        fault.times -= 1
                        if fault.times < 0:
                            del self.faults[key]
                            fault = None
                if fault is not None:
                    body = ERROR_XML.format(code=fault.code, message=f"scripted {fault.code}").encode()
                    start_response(
                        f"{fault.status} {fault.code}",
                        [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                    )
                    return [body]
            return app(environ, start_response)

        return handle

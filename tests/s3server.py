"""A real S3-compatible HTTP endpoint on loopback for tests: moto's server mode, behind a small proxy that
can fail requests on demand (HTTP 500 for the next N uploads or requests, or everything while it is
"down") or slow uploads down; with `iam_enforced()`, moto checks every request's credentials and the
user's policy, as AWS does."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.server import ThreadedMotoServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
CHECKSUM_REFUSED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidArgument</Code>'
    b"<Message>x-amz-checksum-sha256 is not supported</Message></Error>"
)
ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>injected failure</Message></Error>"
)


@dataclass
class Faults:
    """What the proxy does to the next requests. `log` records (method, path, status) of every request."""

    fail_uploads: int = 0  # answer N upload requests (PUT: PutObject / UploadPart) with 500 ...
    fail_after: int = 0  # ... once this many upload requests went through
    parts_only: bool = False  # count only UploadPart requests (the middle of a multipart upload)
    down: bool = False  # answer every request with 500
    refuse_checksums: bool = False  # answer 400 to requests with flexible-checksum headers, like old stores
    fail_requests: int = 0  # answer the next N requests of any kind with 500
    slow_puts_s: float = 0.0  # wait this long before relaying each PUT (a slow link)
    log: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def should_fail(self, method: str, path: str) -> bool:
        with self.lock:
            if self.down:
                return True
            if self.fail_requests > 0:
                self.fail_requests -= 1
                return True
            if method != "PUT" or (self.parts_only and "partNumber=" not in path):
                return False
            if self.fail_after > 0:
                self.fail_after -= 1
                return False
            if self.fail_uploads > 0:
                self.fail_uploads -= 1
                return True
            return False


def _handler(upstream: tuple[str, int], faults: Faults) -> type[BaseHTTPRequestHandler]:
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and 100-continue, as boto3 expects

        def log_message(self, format: str, *args) -> None:  # quiet
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if faults.slow_puts_s and self.command == "PUT":
                time.sleep(faults.slow_puts_s)
            if faults.should_fail(self.command, self.path):
                self._answer(500, {"Content-Type": "application/xml"}, ERROR_BODY)
                return
            if faults.refuse_checksums and any(
                k.lower().startswith(("x-amz-checksum-", "x-amz-sdk-checksum"))
                and k.lower() != "x-amz-checksum-mode"
                for k in self.headers
            ):
                self._answer(400, {"Content-Type": "application/xml"}, CHECKSUM_REFUSED)
                return
            conn = http.client.HTTPConnection(*upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            if self.command == "HEAD":
                out["Content-Length"] = resp.getheader("Content-Length", "0")
                self._answer(resp.status, out, b"", length=False)
            else:
                self._answer(resp.status, out, data)
            conn.close()

        def _answer(self, status: int, headers: dict[str, str], body: bytes, length: bool = True) -> None:
            with faults.lock:
                faults.log.append((self.command, self.path, status))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Proxy


@contextmanager
def s3_server() -> Iterator[tuple[str, Faults]]:
    """(endpoint URL of the proxy in front of a fresh moto server, its Faults), both on 127.0.0.1."""
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    # moto keeps its buckets in process-wide state: start every server empty, whatever ran before it.
    host, port = moto.get_host_and_port()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/moto-api/reset")
    assert conn.getresponse().status == 200
    conn.close()
    faults = Faults()
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _handler(moto.get_host_and_port(), faults))
    proxy.daemon_threads = True
    thread = threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", faults
    finally:
        proxy.shutdown()
        proxy.server_close()
        moto.stop()


def job_bucket(endpoint: str, output: str = "s3://results/runs/smoke") -> dict[str, str]:
    """Create the bucket `results` on the test server; the env vars a job needs to publish to `output`."""
    import boto3

    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    ).create_bucket(Bucket="results")
    return {
        "R1FT_OUTPUT": output,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str


def iam_user(endpoint: str, name: str, actions: list[str]) -> Credentials:
    """An IAM user of the test server, allowed `actions` (e.g. ["s3:*"]) on every resource; [] for none."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    )
    iam.create_user(UserName=name)
    if actions:
        statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
        policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


@contextmanager
def iam_enforced() -> Iterator[None]:
    """While inside: the server (in this process) checks every request's signature and the user's policy."""
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication():
        yield

"""Self-stop through the real vastai SDK against a local HTTP server standing in for Vast's API (VAST_URL)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from r1ft.machine.instance import decide_action, stop_instance
from r1ft.settings_load import load_settings

KEY = "container-key-never-shown"


class FakeVast:
    """Records (method, path, Authorization, JSON body) of every request; answers `status`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, object]] = []
        self.status = 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args) -> None:
                pass

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append((self.command, self.path, self.headers.get("Authorization", ""), body))
                out = json.dumps({"success": fake.status == 200}).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_PUT = do_POST = do_DELETE = _record

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def vast() -> Iterator[FakeVast]:
    fake = FakeVast()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def on_vast(url: str, **extra: str):
    env = {"R1FT_PRESET": "smoke", "CONTAINER_ID": "4242", "CONTAINER_API_KEY": KEY, "VAST_URL": url, **extra}
    return load_settings(env, env_file=None)


def test_decide_action_never_destroys_after_a_failed_publish():
    assert decide_action("auto", True) == "destroy"
    assert decide_action("auto", False) == "stop"
    assert decide_action("destroy", True) == "destroy"
    assert decide_action("destroy", False) == "stop"
    assert decide_action("stop", True) == "stop"
    assert decide_action("none", False) == "none"


def test_destroy_after_a_verified_publish(vast):
    line = stop_instance(on_vast(vast.url), published_ok=True)
    assert vast.requests == [("DELETE", "/api/v0/instances/4242/", f"Bearer {KEY}", {})]
    assert "destroyed instance 4242" in line and KEY not in line


def test_stop_after_a_failed_publish(vast):
    line = stop_instance(on_vast(vast.url), published_ok=False)
    assert vast.requests == [("PUT", "/api/v0/instances/4242/", f"Bearer {KEY}", {"state": "stopped"})]
    assert "stopped instance 4242" in line and "disk kept" in line


@pytest.mark.parametrize("mode", ["destroy", "auto"])
def test_never_destroy_after_an_unverified_publish(vast, mode):
    line = stop_instance(on_vast(vast.url, R1FT_STOP_INSTANCE=mode), published_ok=False)
    assert [method for method, *_ in vast.requests] == ["PUT"]
    assert "stopped" in line


def test_stop_mode_stops_even_after_success(vast):
    stop_instance(on_vast(vast.url, R1FT_STOP_INSTANCE="stop"), published_ok=True)
    assert [(m, body) for m, _, _, body in vast.requests] == [("PUT", {"state": "stopped"})]


def test_none_mode_leaves_it_running(vast):
    line = stop_instance(on_vast(vast.url, R1FT_STOP_INSTANCE="none"), published_ok=True)
    assert vast.requests == [] and "left running" in line and "vastai destroy instance 4242 -y" in line


def test_nothing_happens_outside_vast(vast):
    settings = load_settings({"R1FT_PRESET": "smoke", "VAST_URL": vast.url}, env_file=None)
    line = stop_instance(settings, published_ok=True)
    assert vast.requests == [] and "not on Vast.ai" in line
    only_id = load_settings(
        {"R1FT_PRESET": "smoke", "CONTAINER_ID": "4242", "VAST_URL": vast.url}, env_file=None
    )
    assert "not on Vast.ai" in stop_instance(only_id, published_ok=True) and vast.requests == []


def test_a_failed_call_is_reported_with_the_command_to_run(vast):
    vast.status = 403
    line = stop_instance(on_vast(vast.url), published_ok=True)
    assert "could not destroy instance 4242" in line and "vastai destroy instance 4242 -y" in line
    assert KEY not in line

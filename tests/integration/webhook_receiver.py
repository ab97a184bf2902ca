"""A webhook receiver for tests, on 127.0.0.1 only: records every POST, verifies signatures,
deduplicates by ``Idempotency-Key`` the way a real receiver should, can fail the first attempts
of each delivery, and can go down and come back on the same port."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from projections.webhooks import SIGNATURE_HEADER, verify


@dataclass
class Received:
    key: str
    attempt: int
    status: int
    signed: bool
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class Receiver:
    def __init__(self, secret: str = "", fail_first: int = 0, delay: float = 0.0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.delay = delay
        self.requests: list[Received] = []
        self.accepted: dict[str, dict[str, Any]] = {}  # key → body, first 2xx only
        self.tries: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/spotex"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key") or ""
                signed = verify(receiver.secret, self.headers.get(SIGNATURE_HEADER) or "", body)
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.tries[key] += 1
                    status = 500 if receiver.tries[key] <= receiver.fail_first else 200
                    if status == 200 and not signed:
                        status = 401
                    receiver.requests.append(Received(key, int(self.headers.get("X-Spotex-Attempt") or 0),
                                                      status, signed, json.loads(body)))
                    if status == 200:
                        receiver.accepted.setdefault(key, json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="receiver")
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def successes(self) -> Counter[str]:
        with self.lock:
            return Counter(r.key for r in self.requests if r.status == 200)

    def wait_for(self, keys: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if keys <= set(self.accepted):
                    return
            time.sleep(0.05)
        with self.lock:
            missing = keys - set(self.accepted)
        raise AssertionError(f"{len(missing)} of {len(keys)} deliveries missing after {timeout}s")

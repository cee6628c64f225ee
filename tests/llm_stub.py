"""A local OpenAI-compatible `/chat/completions` stub (http.server in a thread) for tests: no network.

`answer(messages) -> str` decides the reply; every request is recorded (path, headers, body).
`fail_when(messages) -> int | None` can make it answer an HTTP error instead.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubLLM:
    def __init__(self, answer, fail_when=None):
        self.answer, self.fail_when = answer, fail_when
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                code = stub.fail_when(body["messages"]) if stub.fail_when else None
                if code:
                    self.send_response(code)
                    self.end_headers()
                    return
                reply = {"choices": [{"message": {"role": "assistant", "content": stub.answer(body["messages"])}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

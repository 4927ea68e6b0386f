#!/usr/bin/env python3
"""A tiny Tributary custom worker: the user's container in "custom container" mode.

The Tributary worker runtime POSTs every envelope as JSON to this program on localhost:
  * answer 2xx with a JSON body   -> the body replaces the message for the sinks, acked
  * answer 2xx with an empty body -> the envelope goes to the sinks unchanged, acked
  * answer 4xx                    -> the message is dead-lettered with this answer as reason
  * answer 5xx (or crash/timeout) -> retried with backoff
Standard library only. Listens on $BIND:$PORT (default 127.0.0.1:8080).
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def process(envelope):
    """Returns (status, body): readings in Celsius get a Fahrenheit value and a level."""
    payload = envelope.get("payload", {})
    if payload.get("encoding") != "json" or not isinstance(payload.get("data"), dict):
        return 422, {"error": "payload is not a JSON object"}
    celsius = payload["data"].get("temp")
    if not isinstance(celsius, (int, float)):
        return 422, {"error": "payload.temp is missing or not a number"}
    return 200, {
        "id": envelope["id"],
        "device": envelope["device"],
        "receivedAt": envelope["receivedAt"],
        "celsius": celsius,
        "fahrenheit": round(celsius * 9 / 5 + 32, 2),
        "level": "hot" if celsius >= 30 else "normal",
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.reply(200, {"status": "ok"} if self.path == "/healthz" else None)

    def do_POST(self):
        try:
            length = int(self.headers.get("content-length", "0"))
            envelope = json.loads(self.rfile.read(length))
        except (ValueError, json.JSONDecodeError) as error:
            self.reply(400, {"error": f"not JSON: {error}"})
            return
        status, body = process(envelope)
        self.reply(status, body)

    def reply(self, status, body):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status if body is not None or status != 200 else 204)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):  # quiet: one line per request is too much
        pass


if __name__ == "__main__":
    address = (os.environ.get("BIND", "127.0.0.1"), int(os.environ.get("PORT", "8080")))
    server = ThreadingHTTPServer(address, Handler)
    # The bound address, so PORT=0 (any free port, as the tests use) is reported exactly.
    host, port = server.server_address[:2]
    print(f"custom worker listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass

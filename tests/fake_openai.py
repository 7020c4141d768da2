"""A fake OpenAI-compatible chat server on 127.0.0.1, for the openai backend's
unit tests: it records every request, answers like vLLM (``/v1/models`` with
``max_model_len``, ``usage`` with prompt tokens counted from the images' sizes
after its own image processor's budget, vLLM's error texts), and can be told to
fail the next requests (status codes, hangs) or to stop and start again."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from spatialreward.pixels import image_tokens, smart_resize

SC_ANSWER = ('{"edit_region": [{"id": 0, "label": "square", "bbox_2d": [100, 200, 300, 400]}], '
             '"reasoning": "Added.", "score": [20, 18]}')
PQ_ANSWER = '{"reasoning": "Fine.", "score": [22, 21]}'


def decode_image(url: str) -> Image.Image:
    header, data = url.split(",", 1)
    assert header == "data:image/png;base64", header
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    image.load()
    return image


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: when more connections arrive at once
    # than the accept thread takes (24 clients on a loaded 2-core CI machine), the
    # kernel resets some of them and the client sees "connection lost (ReadError)"
    # from a server that is fine. A real engine server listens with a deep backlog.
    request_queue_size = 1024
    allow_reuse_address = True
    daemon_threads = True


class FakeOpenAI:
    def __init__(self, *, models: dict | None = None, limit_images: int = 2, min_pixels: int = 3136,
                 max_pixels: int = 589824, delay_s: float = 0.0, api_key: str | None = None):
        self.models = {"served-model": 8192} if models is None else models
        self.limit_images = limit_images
        self.min_pixels, self.max_pixels = min_pixels, max_pixels  # the server processor's budget
        self.delay_s = delay_s
        self.api_key = api_key
        self.requests: list[dict] = []  # chat bodies, probes included
        self.faults: deque = deque()  # next chat requests: int status, ("status", code, headers) or ("hang", s)
        self.fail_when = None  # body -> True: that request gets HTTP 500 (a request the engine always fails)
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self._server = None
        self._connections: set = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def finish(self):
                with fake._lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def do_GET(self):
                fake._get(self)

            def do_POST(self):
                fake._post(self)

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """As a killed server: stop listening and break the open connections."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            except OSError:
                pass

    def chat_requests(self, *, probes: bool = False) -> list[dict]:
        return [b for b in self.requests if probes or b.get("max_tokens") != 1]

    # -- handlers -------------------------------------------------------------
    def _send(self, handler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _authorized(self, handler) -> bool:
        header = handler.headers.get("Authorization")
        self.auth_headers.append(header)
        if self.api_key and header != f"Bearer {self.api_key}":
            self._send(handler, 401, {"error": {"message": "Unauthorized", "code": 401}})
            return False
        return True

    def _get(self, handler) -> None:
        if not self._authorized(handler):
            return
        if handler.path.rstrip("/") != "/v1/models":
            self._send(handler, 404, {"detail": "Not Found"})
            return
        data = [{"id": name, "object": "model", **({"max_model_len": n} if n else {})} for name, n in self.models.items()]
        self._send(handler, 200, {"object": "list", "data": data})

    def _post(self, handler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        if not self._authorized(handler):
            return
        with self._lock:
            self.requests.append(body)
            fault = self.faults.popleft() if self.faults else None
            if fault is None and self.fail_when is not None and self.fail_when(body):
                fault = 500
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._answer(handler, body, fault)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, handler, body: dict, fault) -> None:
        if isinstance(fault, int):
            fault = ("status", fault, {})
        if fault and fault[0] == "hang":
            time.sleep(fault[1])
        elif fault and fault[0] == "status":
            self._send(handler, fault[1], {"error": {"message": f"fake failure {fault[1]}", "code": fault[1]}}, fault[2])
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        if body.get("model") not in self.models:
            self._send(handler, 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                "type": "NotFoundError", "code": 404}})
            return
        [message] = body["messages"]
        images = [decode_image(p["image_url"]["url"]) for p in message["content"] if p["type"] == "image_url"]
        if len(images) > self.limit_images:
            self._send(handler, 400, {"error": {"message": f"At most {self.limit_images} image(s) may be provided in "
                                                           "one prompt. (parameter=image)", "type": "BadRequestError",
                                                "param": "image", "code": 400}})
            return
        prompt_tokens = 20
        for image in images:
            h, w = smart_resize(image.height, image.width, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
            prompt_tokens += 2 + image_tokens(w, h)
        text = message["content"][-1].get("text", "")
        answer = SC_ANSWER if "Editing instruction" in text else PQ_ANSWER
        self._send(handler, 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 17, "total_tokens": prompt_tokens + 17},
        })

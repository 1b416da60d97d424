"""A tiny OpenAI-compatible server on loopback (standard library only), for the endpoint client's tests.

It answers /v1/completions and /v1/chat/completions from a script first (e.g. two 429s), then properly: the
judge's option log-probs are a fixed function of the prompt, so a test can compute the expected P(A). It
records every request (path, headers, body) and the most requests it had in flight at once.

`kill()` (or `die_after_answers`, from inside a request) is a server process dying: the port stops listening and
the requests in flight are dropped without an answer; `start(port)` brings it back on the same port
(tests/generation/test_endpoint_service.py).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def option_logprobs(prompt: str) -> tuple[float, float]:
    """The fake judge's log P("A"), log P("B") for a prompt: depends on its length, so the two orders differ."""
    return -0.5 - (len(prompt) % 7) / 10, -1.6 - (len(prompt) % 5) / 10


@dataclass
class FakeOpenAI:
    option_ids: tuple[int, int] = (0, 1)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # answered first, in order
    refuse_fields: set[str] = field(default_factory=set)  # a request with one of these fields gets a 400
    logprobs: bool = True  # False: a server that never returns log-probs
    require_key: str | None = None
    delay_s: float = 0.0
    die_after_answers: int | None = None  # the first request after this many 200 answers kills the server
    answered: int = 0  # requests answered 200
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _killed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, port: int = 0) -> str:
        """Serve on `port` (0: a free one); the base URL."""
        fake = self
        self._killed = False

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                """Quiet: the test reads the fake's own record of requests, not the server's log."""

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append((self.path, dict(self.headers), body))
                    dying = fake.die_after_answers is not None and fake.answered >= fake.die_after_answers
                    if dying:  # (decided under the lock: one request kills it, the others in flight see it dead)
                        fake.die_after_answers, fake._killed = None, True
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                    scripted = fake.script.pop(0) if fake.script and not dying else None
                if dying:
                    fake.stop()
                try:
                    time.sleep(fake.delay_s)
                    status, headers, payload = fake.answer(self.path, dict(self.headers), body, scripted)
                finally:
                    with fake._lock:
                        fake._in_flight -= 1
                # Killed (or killed and started again: this request came to the dead server): the client sees the
                # connection close with no answer.
                if fake._killed or self.server is not fake.server:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if status == 200:
                    with fake._lock:
                        fake.answered += 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {**headers, "content-type": "application/json"}.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)  # (SO_REUSEADDR: a restart can rebind)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kill(self) -> None:
        """Stop listening at once and drop the requests in flight unanswered, as a killed server process would."""
        self._killed = True
        self.stop()

    @property
    def killed(self) -> bool:
        return self._killed

    def answer(
        self, path: str, headers: dict[str, str], body: dict[str, Any], scripted: tuple[int, dict[str, str]] | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if scripted is not None:
            return scripted[0], scripted[1], {"error": {"message": f"scripted {scripted[0]}"}}
        if self.require_key is not None and headers.get("Authorization") != f"Bearer {self.require_key}":
            return 401, {}, {"error": {"message": "no or wrong key"}}
        refused = sorted(self.refuse_fields & set(body))
        if refused:
            return 400, {}, {"error": {"message": f"unknown field {refused[0]}"}}
        prompt = body.get("prompt") or json.dumps(body.get("messages"))
        n = int(body.get("n", 1))
        logp_a, logp_b = option_logprobs(prompt)
        a, b = self.option_ids
        choices = []
        for index in range(n):
            letter = "A" if logp_a >= logp_b else "B"
            if body.get("max_tokens") == 1:  # a judge request: the answered letter, with log-probs if asked
                text = letter
            elif "Options:" in prompt:  # the plain judge question over the chat API: a sentence
                text = f"The answer is: ({letter}) because it is better."
            else:
                text = f"answer {index} to {len(prompt)} chars (seed {body.get('seed')})"
            choice: dict[str, Any] = {"index": index, "text": text, "finish_reason": "stop"}
            if self.logprobs and body.get("logprobs") not in (None, False):
                if "logprob_token_ids" in body:
                    top = {f"token_id:{a}": logp_a, f"token_id:{b}": logp_b}
                else:
                    k = int(body.get("top_logprobs") or body["logprobs"])
                    others = {f"token_id:{1000 + i}": -3.0 - i for i in range(max(0, k - 2))}
                    top = {f"token_id:{a}": logp_a, f"token_id:{b}": logp_b, **others}
                    top = dict(sorted(top.items(), key=lambda kv: -kv[1])[:k])
                if not body.get("return_tokens_as_token_ids"):
                    top = {("A" if key == f"token_id:{a}" else "B" if key == f"token_id:{b}" else key): v
                           for key, v in top.items()}  # fmt: skip
                choice["logprobs"] = {"top_logprobs": [top], "tokens": [text], "token_logprobs": [max(top.values())]}
            choices.append(choice)
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": n * (1 if body.get("max_tokens") == 1 else 6)}
        if path.endswith("/chat/completions"):
            choices = [_as_chat(choice) for choice in choices]
        return 200, {}, {"id": "x", "object": "text_completion", "choices": choices, "usage": usage}


def _as_chat(choice: dict[str, Any]) -> dict[str, Any]:
    """A completions choice in the chat API's shape (message.content; logprobs.content[i].top_logprobs)."""
    out: dict[str, Any] = {
        "index": choice["index"],
        "message": {"role": "assistant", "content": choice["text"]},
        "finish_reason": choice["finish_reason"],
    }
    if "logprobs" in choice:
        top = choice["logprobs"]["top_logprobs"][0]
        entries = [{"token": token, "logprob": value} for token, value in top.items()]
        out["logprobs"] = {"content": [{"token": choice["text"], "logprob": 0.0, "top_logprobs": entries}]}
    return out


def expected_p_a(prompt: str) -> float:
    logp_a, logp_b = option_logprobs(prompt)
    return 1 / (1 + math.exp(logp_b - logp_a))

"""A run made by the CLI, served by `lmforge serve` on a real loopback port; graceful SIGTERM."""

from __future__ import annotations

import threading
import time

import httpx

import lmforge
from tests.serve.live import LiveServer


def test_serve_a_cli_run_end_to_end_and_drain_on_sigterm(classify_run):
    server = LiveServer(f"sentiment={classify_run}", "--shutdown-delay", "1.5", "--api-key", "k3y")
    with server:
        auth = {"Authorization": "Bearer k3y"}
        texts = ["an absolute delight", "tedious and overlong"]
        body = httpx.post(server.url + "/v1/classify", json={"inputs": texts}, headers=auth).json()
        assert [r["label"] for r in body["results"]] == [r["label"] for r in lmforge.load(classify_run).predict(texts)]
        assert httpx.post(server.url + "/v1/classify", json={"inputs": "x"}).status_code == 401
        server.proc.send_signal(15)  # SIGTERM
        time.sleep(0.4)
        assert httpx.get(server.url + "/health/ready").status_code == 503  # draining: not ready ...
        late = httpx.post(server.url + "/v1/classify", json={"inputs": "still served"}, headers=auth)
        assert late.status_code == 503  # ... and new work is turned away with a clear answer
        assert server.proc.wait(30) == 0
    output = server.proc.stdout.read()
    assert "serving 1 model(s) at http://127.0.0.1:" in output


def test_in_flight_requests_finish_on_sigterm(classify_run):
    # a 1.5 s micro-batch window keeps the request in flight while SIGTERM arrives
    server = LiveServer(f"sentiment={classify_run}", "--batch-wait-ms", "1500")
    with server:
        results = {}
        big = ["a long review that keeps going"] * 8  # fewer than a full batch: the batcher waits

        def call():
            results["response"] = httpx.post(server.url + "/v1/classify", json={"inputs": big}, timeout=30)

        worker = threading.Thread(target=call)
        worker.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "lmforge_in_flight_requests 1.0" in httpx.get(server.url + "/metrics").text:
                break
            time.sleep(0.02)
        server.proc.send_signal(15)
        worker.join(30)
        assert results["response"].status_code == 200 and len(results["response"].json()["results"]) == 8
        assert server.proc.wait(30) == 0


def test_serve_refuses_bad_runs(cli, tmp_path):
    result = cli("serve", str(tmp_path / "missing"))
    assert result.code == 2 and "not found" in result.err


def _stream_completion(url: str, max_tokens: int, lines: list[str], errors: list[Exception]) -> None:
    body = {"model": "gpt", "prompt": "It is", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            lines.append(f"status {response.status_code}")
            for line in response.iter_lines():
                if line:
                    lines.append(line)
    except httpx.HTTPError as exc:  # the server cut the stream
        errors.append(exc)


def _wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_drain_answers_new_requests_503_while_a_stream_finishes_then_exits_0(gpt_run):
    # 40 tokens at 50 ms: a ~2 s stream, well inside the default 30 s drain timeout; no --shutdown-delay
    server = LiveServer(f"gpt={gpt_run}", module="tests.serve.slow_generation")
    with server:
        lines, errors = [], []
        worker = threading.Thread(target=_stream_completion, args=(server.url, 40, lines, errors))
        worker.start()
        _wait_for(lambda: len(lines) >= 3)  # the stream is under way
        server.proc.send_signal(15)
        time.sleep(0.3)
        late = httpx.post(server.url + "/v1/completions", json={"model": "gpt", "prompt": "hi", "max_tokens": 2})
        assert late.status_code == 503 and late.headers["retry-after"] == "5"
        assert late.headers["connection"] == "close"
        assert late.json()["error"]["message"] == "the server is shutting down"
        assert httpx.get(server.url + "/health/ready").json() == {"detail": "the server is shutting down"}
        assert worker.is_alive()  # the stream is still going while new work is turned away
        worker.join(30)
        assert errors == [] and lines[0] == "status 200" and lines[-1] == "data: [DONE]"
        assert server.proc.wait(30) == 0


def test_a_stream_longer_than_the_drain_timeout_is_dropped_and_the_exit_status_says_so(gpt_run):
    # 400 tokens at 50 ms would take 20 s; the drain gives in-flight requests 1 s
    server = LiveServer(f"gpt={gpt_run}", "--drain-timeout", "1", module="tests.serve.slow_generation")
    with server:
        lines, errors = [], []
        worker = threading.Thread(target=_stream_completion, args=(server.url, 400, lines, errors))
        worker.start()
        _wait_for(lambda: len(lines) >= 3)
        signalled = time.monotonic()
        server.proc.send_signal(15)
        assert server.proc.wait(15) == 3
        assert time.monotonic() - signalled < 6  # dropped at the 1 s drain timeout, not after the whole stream
        worker.join(10)
        assert "data: [DONE]" not in lines and len(errors) == 1  # the client sees a cut stream, not a clean end
    output = server.proc.stdout.read()
    assert "dropped 1 request(s) still in flight after the 1s drain timeout" in output
    assert "Traceback" not in output


def test_a_request_dropped_before_its_answer_started_gets_503(classify_run):
    # a 20 s micro-batch window keeps the classify request waiting, with no response started, past a 0.5 s drain
    server = LiveServer(f"sentiment={classify_run}", "--batch-wait-ms", "20000", "--drain-timeout", "0.5")
    with server:
        results = {}
        worker = threading.Thread(target=lambda: results.update(
            response=httpx.post(server.url + "/v1/classify", json={"inputs": ["waits"]}, timeout=30)))
        worker.start()
        _wait_for(lambda: "lmforge_in_flight_requests 1.0" in httpx.get(server.url + "/metrics").text)
        server.proc.send_signal(15)
        assert server.proc.wait(15) == 3
        worker.join(10)
        response = results["response"]
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert "shut down before this request finished" in response.json()["detail"]


def test_a_second_ctrl_c_drops_the_requests_in_flight_at_once(gpt_run):
    server = LiveServer(f"gpt={gpt_run}", module="tests.serve.slow_generation")
    with server:
        lines, errors = [], []
        worker = threading.Thread(target=_stream_completion, args=(server.url, 400, lines, errors))
        worker.start()
        _wait_for(lambda: len(lines) >= 3)
        server.proc.send_signal(2)  # SIGINT: drain, with the default 30 s timeout
        time.sleep(0.5)
        assert server.proc.poll() is None and worker.is_alive()
        server.proc.send_signal(2)  # again: stop now
        assert server.proc.wait(10) == 3
        worker.join(10)
        assert "data: [DONE]" not in lines and len(errors) == 1
    assert "dropped 1 request(s) still in flight on a second signal" in server.proc.stdout.read()

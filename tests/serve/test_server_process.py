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

"""What the middlewares answer before a route runs: the API key first (401, before the body is read), metrics labelled
by the route a request was meant for, and the API docs served from the package (no CDN)."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from lmforge.serve import limits
from lmforge.serve.app import create_app
from lmforge.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
KEY = {"Authorization": "Bearer s3cret"}


def make_client(run, **settings) -> TestClient:
    return TestClient(create_app([f"sentiment={run}"], ServeSettings(**settings), load_in_background=False))


def counted(client: TestClient, headers: dict | None = None) -> dict[tuple[str, str, str], float]:
    """lmforge_requests_total as {(method, route, status): count}."""
    text = client.get("/metrics", headers=headers).text
    pattern = r'lmforge_requests_total\{method="(\w+)",route="([^"]*)",status="(\d+)"\} ([\d.]+)'
    return {(m, r, s): float(v) for m, r, s, v in re.findall(pattern, text)}


# ---------------------------------------------------------------- API key: checked first, /metrics behind it


def test_the_key_is_checked_before_the_body_is_parsed_or_read(classify_run):
    with make_client(classify_run, api_key="s3cret", max_body_bytes=2048) as c:
        broken = c.post("/v1/classify", content=b'{"inputs": ', headers={"content-type": "application/json"})
        assert broken.status_code == 401  # not 422: without the key, nothing about the request is looked at
        assert broken.json() == {"detail": "missing or wrong API key: send the header 'Authorization: Bearer <key>'"}
        assert broken.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/classify", content=b"x" * 5000).status_code == 401  # not 413
        chunked = c.post("/v1/classify", content=iter([b'{"inputs": "', b"z" * 3000, b'"}']))
        assert chunked.status_code == 401
        assert c.post("/v1/classify", json={"text": "x"}, headers={"Authorization": "Bearer s3cre"}).status_code == 401
        with_key = c.post("/v1/classify", content=b'{"inputs": ', headers={**KEY, "content-type": "application/json"})
        assert with_key.status_code == 422 and "invalid request" in with_key.json()["detail"]
        assert c.post("/v1/classify", content=b"x" * 5000, headers=KEY).status_code == 413
        assert c.post("/v1/classify", json={"inputs": "fine"}, headers=KEY).status_code == 200


def test_openai_routes_answer_401_in_openais_shape(chat_run):
    app = create_app([f"chat={chat_run}"], ServeSettings(api_key="s3cret"), load_in_background=False)
    with TestClient(app) as c:
        response = c.post("/v1/chat/completions", content=b"not json", headers={"content-type": "application/json"})
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert error["message"].startswith("missing or wrong API key")


def test_metrics_need_the_key_unless_public_and_health_docs_ui_stay_open(classify_run):
    with make_client(classify_run, api_key="s3cret") as c:
        assert c.post("/v1/classify", json={"inputs": "x"}, headers=KEY).status_code == 200
        hidden = c.get("/metrics")
        assert hidden.status_code == 401 and hidden.headers["www-authenticate"] == "Bearer"
        assert "sentiment" not in hidden.text and "lmforge_requests_total" not in hidden.text
        assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        shown = c.get("/metrics", headers=KEY)
        assert shown.status_code == 200 and 'lmforge_batch_size_count{model="sentiment"} 1.0' in shown.text
        for open_path in ("/health/live", "/health/ready", "/", "/docs", "/redoc", "/openapi.json", "/static/app.js",
                          "/manifest.webmanifest", "/sw.js", "/offline.html", "/static/icons/icon-192.png"):
            assert c.get(open_path).status_code == 200, open_path
    with make_client(classify_run, api_key="s3cret", metrics_public=True) as c:
        assert c.get("/metrics").status_code == 200
        assert c.post("/v1/classify", json={"inputs": "x"}).status_code == 401  # only /metrics is made public


def test_the_key_compare_is_constant_time(classify_run, monkeypatch):
    calls = []
    real = limits.hmac.compare_digest
    monkeypatch.setattr(limits.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    with make_client(classify_run, api_key="s3cret") as c:
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3creT"}).status_code == 401
        assert c.get("/v1/models", headers=KEY).status_code == 200
    assert (b"s3creT", b"s3cret") in calls and (b"s3cret", b"s3cret") in calls


def test_metrics_public_is_a_documented_setting_and_a_flag(cli):
    assert "/metrics without it" in ServeSettings.model_fields["metrics_public"].description
    assert "drop" in ServeSettings.model_fields["drain_timeout_s"].description
    assert ServeSettings().drain_timeout_s == 30.0 and ServeSettings().metrics_public is False
    help_text = cli("serve", "--help").out
    assert "--drain-timeout" in help_text and "--metrics-public" in help_text


# ---------------------------------------------------------------- metrics: labelled with the route, bounded


def test_middleware_answers_are_labelled_with_the_route_they_were_for(classify_run):
    app = create_app([f"sentiment={classify_run}"],
                     ServeSettings(api_key="s3cret", max_body_bytes=2048, max_in_flight=1, micro_batch=False),
                     load_in_background=False)
    with TestClient(app) as c:
        assert c.post("/v1/classify", json={"inputs": "x"}).status_code == 401
        assert c.get("/v1/models/sentiment").status_code == 401
        assert c.post("/v1/classify", content=b"x" * 5000, headers=KEY).status_code == 413
        app.state.draining = True
        assert c.post("/v1/classify", json={"inputs": "x"}, headers=KEY).status_code == 503
        app.state.draining = False
        assert c.get("/static/app.js").status_code == 200 and c.get("/docs-assets/redoc/LICENSE").status_code == 200
        assert c.get("/no/such/page").status_code == 404
        seen = counted(c, KEY)
    assert seen[("POST", "/v1/classify", "401")] == 1
    assert seen[("GET", "/v1/models/{name}", "401")] == 1
    assert seen[("POST", "/v1/classify", "413")] == 1
    assert seen[("POST", "/v1/classify", "503")] == 1
    assert seen[("GET", "/static", "200")] == 1 and seen[("GET", "/docs-assets", "200")] == 1
    assert seen[("GET", "unmatched", "404")] == 1


def test_429_is_labelled_with_its_route(classify_run):
    app = create_app([f"sentiment={classify_run}"], ServeSettings(max_in_flight=1, micro_batch=False),
                     load_in_background=False)
    app.state.registry.load_all()
    pipeline = app.state.registry.models["sentiment"].pipeline
    gate, original = threading.Event(), pipeline.predict
    pipeline.predict = lambda texts, **kw: (gate.wait(10), original(texts, **kw))[1]

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            slow = asyncio.create_task(c.post("/v1/classify", json={"inputs": "slow"}))
            await asyncio.sleep(0.3)
            busy = await c.post("/v1/classify", json={"inputs": "second"})
            gate.set()
            return busy, await slow

    busy, slow = asyncio.run(scenario())
    assert (busy.status_code, slow.status_code) == (429, 200)
    count = app.state.metrics.registry.get_sample_value(
        "lmforge_requests_total", {"method": "POST", "route": "/v1/classify", "status": "429"})
    assert count == 1.0


def test_unknown_paths_do_not_grow_the_label_set(classify_run):
    with make_client(classify_run, max_body_bytes=2048) as c:
        for i in range(40):
            c.get(f"/random/{i}")
            c.post(f"/v1/nothing-{i}", content=b"x" * 5000)  # answered 413 by a middleware, for no route
        routes = {route for _, route, _ in counted(c)}
    assert routes == {"unmatched"}  # 80 requests to 80 unknown paths: one label value


# ---------------------------------------------------------------- API docs from the package


def test_docs_pages_load_their_assets_from_this_server(classify_run):
    with make_client(classify_run) as c:
        for page in ("/docs", "/redoc"):
            html = c.get(page).text
            urls = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert urls and all(u.startswith("/docs-assets/") for u in urls), urls
            assert "cdn" not in html and "fonts.googleapis" not in html
            for url in urls:
                asset = c.get(url)
                assert asset.status_code == 200 and len(asset.content) > 500, url
        assert "url: '/openapi.json'" in c.get("/docs").text
        assert c.get("/docs-assets/swagger-ui/swagger-ui-bundle.js").headers["content-type"].startswith(
            ("text/javascript", "application/javascript"))
    behind_proxy = TestClient(create_app([f"sentiment={classify_run}"], load_in_background=False), root_path="/api")
    with behind_proxy as c:
        html = c.get("/docs").text
        assert 'src="/api/docs-assets/swagger-ui/swagger-ui-bundle.js"' in html and "url: '/api/openapi.json'" in html


def test_docs_assets_ship_with_their_licenses_in_the_package():
    assets = ROOT / "src" / "lmforge" / "serve" / "docs_assets"
    for name in ("swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css", "swagger-ui/LICENSE",
                 "swagger-ui/NOTICE", "redoc/redoc.standalone.js", "redoc/LICENSE"):
        assert (assets / name).stat().st_size > 50, name
    assert "Apache License" in (assets / "swagger-ui" / "LICENSE").read_text()
    assert "MIT License" in (assets / "redoc" / "LICENSE").read_text()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p.relative_to(ROOT / "src" / "lmforge").as_posix() for pattern in package_data["lmforge"]
               for p in (ROOT / "src" / "lmforge").glob(pattern) if p.is_file()}
    assert {"serve/docs_assets/swagger-ui/swagger-ui-bundle.js", "serve/docs_assets/redoc/redoc.standalone.js",
            "serve/docs_assets/redoc/LICENSE", "serve/docs_assets/swagger-ui/LICENSE"} <= shipped


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_routes_are_not_in_the_schema(classify_run, page):
    with make_client(classify_run) as c:
        assert page not in c.get("/openapi.json").json()["paths"]

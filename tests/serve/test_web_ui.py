"""The web UI in real headless Chromium (Debian's chromium driven by Playwright): type, submit, compare with the API."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

import lmforge
from tests.serve.live import LiveServer, free_port

# LMFORGE_CHROMIUM points at another browser binary (the tests of this very check point it at nothing)
CHROMIUM = os.environ.get("LMFORGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SUDO = "" if os.geteuid() == 0 else "sudo "
INSTALL = f"{SUDO}apt-get update && {SUDO}apt-get install -y --no-install-recommends chromium fonts-dejavu-core"


def browser_required() -> bool:
    """CI (CI=true) and `make test` (LMFORGE_REQUIRE_BROWSER=1) must run these tests: a missing browser fails them."""
    return (os.environ.get("CI", "").lower() in ("true", "1", "yes")
            or os.environ.get("LMFORGE_REQUIRE_BROWSER", "") not in ("", "0"))


def missing_browser() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Debian's chromium is not installed ({CHROMIUM} not found); install it with: {INSTALL}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing; install the dev extras: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="session", autouse=True)
def chromium_present():
    """Checked before anything else is set up (autouse, session scope: ahead of the model fixtures)."""
    problem = missing_browser()
    if problem:  # fail, not skip, where the browser tests must run: a skipped UI test hides a broken UI
        (pytest.fail if browser_required() else pytest.skip)(problem + " (`make test` does it for you)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(classify_run):
    with LiveServer(f"sentiment={classify_run}") as srv:
        yield srv


def test_type_submit_and_see_the_apis_label(browser, server):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server.url)
    page.wait_for_selector("#status.pill-ok")
    page.wait_for_selector("#model option", state="attached")  # the models load once the server is ready
    assert page.locator("#model").input_value() == "sentiment"
    page.wait_for_selector("#card-body .metric")  # model card: eval metrics
    assert page.locator("#card-body svg.curve").count() == 1  # and the training curve
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    row = page.locator("#served tbody tr").first.locator("td").all_inner_texts()
    assert row == [card["id"], card["task"], card["family"], f"{card['parameters'] / 1e6:.1f}M", f"{card['size_mb']:.1f} MB"]
    texts = ["A gorgeous, moving film.", "A dull, lifeless mess."]
    page.fill("#text", "\n".join(texts))
    page.click("#submit")
    page.wait_for_selector(".result .label-badge")
    shown = page.locator(".result .label-badge").all_inner_texts()
    api = httpx.post(server.url + "/v1/classify", json={"inputs": texts}).json()
    assert shown == [r["label"] for r in api["results"]]
    bars = page.locator(".result").first.locator('[role="progressbar"]')
    assert bars.count() == 2
    assert page.locator("#history li").count() == 2  # recent predictions stay on the page
    page.screenshot(path=str(ARTIFACTS / "web-ui.png"), full_page=True)
    # why? the words highlighted by their attribution, as the API gives them, and an attention map
    first = page.locator(".result").first
    first.locator(".why-method").select_option("occlusion")
    first.locator(".why-button").click()
    page.wait_for_selector(".result .why mark.attr")
    marked = first.locator("mark.attr").all_inner_texts()
    api = httpx.post(server.url + "/v1/explain", json={"text": texts[0], "method": "occlusion"}).json()
    assert marked == [w["word"] for w in api["words"]]
    scores = [float(s) for s in first.locator("mark.attr").evaluate_all("els => els.map(e => e.dataset.score)")]
    assert scores == pytest.approx([w["score"] for w in api["words"]], abs=1e-6)
    cells = first.locator(".attention-map rect").count()
    tokens = len(httpx.post(server.url + "/v1/explain", json={"text": texts[0], "method": "occlusion",
                                                              "attention": True}).json()["attention"]["tokens"])
    assert cells == tokens * tokens
    first.locator(".att-head").select_option("1")  # another head redraws the map
    page.screenshot(path=str(ARTIFACTS / "web-ui-explain.png"), full_page=True)


def test_keyboard_only_and_phone_width(browser, server):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server.url)
    page.wait_for_selector("#status.pill-ok")
    page.focus("#text")
    page.keyboard.type("What a waste of two hours.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".result .label-badge")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing overflows sideways at phone width
    page.screenshot(path=str(ARTIFACTS / "web-ui-phone.png"), full_page=True)


def test_errors_are_shown_clearly(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#status.pill-ok")
    page.uncheck("#per-line")
    page.fill("#text", " ".join(["long"] * 400))
    page.click("#submit")
    error = page.locator("#form-error")
    error.wait_for(state="visible")
    assert "longer than the model's 64 tokens" in error.inner_text() and "(422)" in error.inner_text()
    # server down: the page says so instead of failing silently
    page.route("**/v1/classify", lambda route: route.abort())
    page.fill("#text", "anything")
    page.click("#submit")
    page.wait_for_selector("#banner:not([hidden])")
    assert "Cannot reach the lmforge server" in page.locator("#banner").inner_text()


@pytest.fixture(scope="module")
def chat_server(chat_run, gpt_run):
    with LiveServer(f"chat={chat_run}", f"gpt={gpt_run}") as srv:
        yield srv


def open_tab(browser, server, tab: str, width: int, height: int):
    """A page at this size, once the server is ready and the tab shows (its models are loaded), on that tab."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(server.url)
    page.wait_for_selector("#status.pill-ok")
    page.wait_for_selector(f"#tab-{tab}:not([hidden])")
    assert page.locator("#tab-classify").is_hidden()  # no classifier loaded: the page opens on what there is
    page.click(f"#tab-{tab}")
    return page


def test_chat_page_streams_a_reply(browser, chat_server):
    page = open_tab(browser, chat_server, "chat", 1000, 800)
    page.click(".settings summary")  # sampling settings are folded away by default
    page.fill("#chat-temperature", "0")
    page.fill("#chat-input", "What is AI?")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.assistant:not(.streaming)")
    reply = page.locator(".msg.assistant").inner_text()
    api = httpx.post(chat_server.url + "/v1/chat/completions", json={
        "model": "chat", "messages": [{"role": "user", "content": "What is AI?"}], "temperature": 0,
        "top_p": 0.95, "max_tokens": 128}).json()
    assert reply == (api["choices"][0]["message"]["content"] or "(no reply)")
    assert page.locator(".msg.user").inner_text() == "What is AI?"
    page.screenshot(path=str(ARTIFACTS / "web-ui-chat.png"), full_page=True)
    page.click("#tab-complete")
    page.fill("#prompt", "It is a truth")
    page.fill("#complete-max-tokens", "8")
    page.click("#complete-submit")
    page.wait_for_function("document.querySelector('#completion').innerText.length > 'It is a truth'.length")


def offline_page(browser, server_url: str):
    """A page that can reach the server and nothing else; returns it with the list of URLs it tried elsewhere."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    blocked: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(server_url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    return page, blocked


def test_swagger_ui_lists_the_operations_offline(browser, server):
    page, blocked = offline_page(browser, server.url)
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path[data-path='/v1/classify']", timeout=20_000)
    operations = {(el.get_attribute("data-path")) for el in page.locator(".opblock-summary-path").all()}
    assert {"/v1/classify", "/v1/models", "/health/ready", "/metrics"} <= operations
    post = page.locator(".opblock-post:has(.opblock-summary-path[data-path='/v1/classify'])")
    assert post.locator(".opblock-summary-method").inner_text() == "POST"
    assert blocked == []  # everything it needed came from the server
    page.screenshot(path=str(ARTIFACTS / "docs-swagger.png"))


def test_redoc_renders_the_api_offline(browser, server):
    page, blocked = offline_page(browser, server.url)
    page.goto(server.url + "/redoc")
    page.wait_for_selector("h1:has-text('lmforge')", timeout=20_000)
    page.get_by_text("/v1/classify").first.wait_for(timeout=20_000)
    sections = [el.get_attribute("data-section-id") for el in page.locator("[data-section-id]").all()]
    assert any(sid.startswith("tag/classify/operation/") for sid in sections), sections
    assert blocked == []
    page.screenshot(path=str(ARTIFACTS / "docs-redoc.png"))


@pytest.fixture(scope="module")
def translation_server(tiny_t5_dir, tmp_path_factory):
    from lmforge.tasks.translate import FinetuneTranslateConfig, finetune_translate
    from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl

    folder = tmp_path_factory.mktemp("mt")
    data = write_jsonl(folder / "pairs.jsonl", read_jsonl_gz(BUNDLED / "translation" / "bible_en_es.dev.jsonl.gz", 16))
    finetune_translate(FinetuneTranslateConfig.model_validate({
        "model": str(tiny_t5_dir), "data": str(data), "out": str(folder / "run"),
        "train": {"max_steps": 2, "batch_size": 8}}), show_progress=False)
    with LiveServer(f"mt={folder / 'run'}") as srv:
        yield srv


def assert_translates_like_the_api(page, server, slots: dict, request: dict) -> None:
    """Translate "In the beginning" on the page with these form slots; the page shows what the API answers."""
    page.fill("#translate-input", "In the beginning")
    for slot, value in slots.items():
        page.fill(f"#page-translate [data-slot={slot}]", value)
    page.click("#page-translate [data-slot=submit]")
    page.wait_for_selector("#page-translate .outputs li")
    shown = page.locator("#page-translate .output").inner_text()
    api = httpx.post(server.url + "/v1/translate", json={"inputs": ["In the beginning"], "truncate": True,
                                                          **request}).json()
    assert shown == (api["results"][0]["text"] or "(empty)")


def test_translate_page_at_phone_width_answers_like_the_api(browser, translation_server):
    page = open_tab(browser, translation_server, "translate", 390, 844)
    assert page.locator("#tab-summarize").is_hidden()
    assert_translates_like_the_api(page, translation_server, {"beams": "2", "max-tokens": "6"},
                                   {"num_beams": 2, "max_new_tokens": 6})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "web-ui-translate-phone.png"), full_page=True)


def test_a_base_decoder_translates_few_shot_on_the_translate_page(browser, tiny_gemma3_dir):
    with LiveServer(f"base={tiny_gemma3_dir}") as server:
        page = open_tab(browser, server, "translate", 1280, 800)
        assert page.locator("#tab-summarize").is_visible()  # a causal LM answers both, few-shot
        assert_translates_like_the_api(page, server, {"shots": "2", "max-tokens": "5"},
                                       {"shots": 2, "num_beams": 4, "max_new_tokens": 5})


@pytest.fixture(scope="module")
def kb_server(chat_run, tmp_path_factory):
    from lmforge.kb import KnowledgeBase
    from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl

    folder = tmp_path_factory.mktemp("kb")
    docs = write_jsonl(folder / "docs.jsonl",
                       read_jsonl_gz(BUNDLED / "python-docs-kb" / "python_docs_kb.jsonl.gz", 200)[::10])
    KnowledgeBase.build(folder / "kb", [str(docs)], show_progress=False)
    with LiveServer(f"chat={chat_run}", "--kb", str(folder / "kb")) as srv:
        yield srv


def test_ask_the_docs_at_phone_width_streams_the_answer_the_api_gives(browser, kb_server):
    page = open_tab(browser, kb_server, "ask", 390, 844)
    assert "20 passages" in page.locator("#kb-info").inner_text()
    question = "How are these documents generated?"
    page.fill("#ask-question", question)
    page.fill("#ask-k", "2")
    page.click("#ask-submit")
    page.wait_for_selector("#passages .passage")
    page.wait_for_function("!document.querySelector('#ask-submit').disabled")
    api = httpx.post(kb_server.url + "/v1/kb/ask", json={"question": question, "k": 2}, timeout=60).json()
    assert page.locator("#answer").inner_text().startswith(api["answer"])
    shown = page.locator("#passages .passage strong").all_inner_texts()
    assert shown == [f"[{p['n']}] {p['title'] or p['id']}" for p in api["passages"]]
    # a citation in an answer is a link to its passage
    page.evaluate("document.querySelector('#answer').innerHTML = citeLinks('It says so [1].')")
    page.click("#answer a.cite")
    page.wait_for_selector("#passage-1.flash")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "web-ui-ask-phone.png"), full_page=True)


# ---------------------------------------------------------------- installable app (PWA)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHELL = {"/", "/offline.html", "/manifest.webmanifest", "/static/app.js", "/static/app.css",
         "/static/icons/icon-192.png", "/static/icons/icon-512.png", "/static/icons/icon-maskable-512.png",
         "/static/icons/apple-touch-icon.png"}
NETWORK_ONLY = ("/v1", "/health", "/metrics", "/docs", "/redoc", "/openapi.json")
PHONE = {"width": 390, "height": 844}
# resolves once the page's service worker is active, with its state ("activated")
WORKER_ACTIVATED = """async () => {
  const worker = (await navigator.serviceWorker.ready).active;
  if (worker.state !== "activated") {
    await new Promise((done) => worker.addEventListener("statechange", () => worker.state === "activated" && done()));
  }
  return worker.state;
}"""
CACHED_PATHS = """async () => {
  const paths = {};
  for (const name of await caches.keys()) {
    paths[name] = (await (await caches.open(name)).keys()).map((request) => new URL(request.url).pathname);
  }
  return paths;
}"""


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (signature, then the IHDR chunk: length, type, width, height)."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", data[:16]
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_manifest_is_valid_and_its_icons_are_pngs_of_their_declared_size(server):
    response = httpx.get(server.url + "/manifest.webmanifest")
    assert response.status_code == 200 and response.headers["content-type"] == "application/manifest+json"
    manifest = response.json()
    assert manifest["name"] == manifest["short_name"] == "lmforge"
    assert manifest["display"] == "standalone" and manifest["scope"] == "/" and manifest["start_url"] == "/"
    assert manifest["start_url"].startswith(manifest["scope"])  # start_url within scope
    css = (Path(__file__).resolve().parents[2] / "src/lmforge/serve/web/app.css").read_text()
    light = dict(re.findall(r"--(bg|card):\s*(#[0-9a-f]{6})", css.split("@media")[0]))
    assert manifest["background_color"] == light["bg"] and manifest["theme_color"] == light["card"]  # the top bar
    sizes = {}
    for icon in manifest["icons"]:
        image = httpx.get(server.url + icon["src"])
        assert image.status_code == 200 and image.headers["content-type"] == icon["type"] == "image/png", icon
        width, height = png_size(image.content)
        assert icon["sizes"] == f"{width}x{height}", icon
        sizes.setdefault(icon.get("purpose", "any"), set()).add(icon["sizes"])
    assert {"192x192", "512x512"} <= sizes["any"] and "512x512" in sizes["maskable"]
    page = httpx.get(server.url + "/").text  # the UI links it, with an icon for iOS home screens
    assert '<link rel="manifest" href="/manifest.webmanifest">' in page and 'name="theme-color"' in page
    apple = re.search(r'rel="apple-touch-icon" href="([^"]+)"', page).group(1)
    assert png_size(httpx.get(server.url + apple).content) == (180, 180)
    # the worker comes from the root path (its scope is the whole UI), is never stale, and names its cache after
    # the version, so an upgrade replaces the cached shell
    worker = httpx.get(server.url + "/sw.js")
    assert worker.status_code == 200 and "javascript" in worker.headers["content-type"]
    assert worker.headers["cache-control"] == "no-cache"
    assert f'"{lmforge.__version__}-' in worker.text and "__LMFORGE_CACHE_VERSION__" not in worker.text
    offline = httpx.get(server.url + "/offline.html")
    assert offline.status_code == 200 and "lmforge serve RUN" in offline.text
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert not {"/sw.js", "/manifest.webmanifest", "/offline.html"} & set(paths)  # UI files, not API operations


@pytest.fixture
def profile_context(browser, tmp_path):
    """A browser context with a profile on disk, as a user's browser has. Chromium never offers to install an app
    from an incognito context, which is what browser.new_page() opens."""
    context = browser.browser_type.launch_persistent_context(tmp_path / "profile", executable_path=CHROMIUM, args=ARGS,
                                                             viewport={"width": 1200, "height": 900})
    yield context
    context.close()


def test_the_service_worker_activates_and_chromium_finds_the_app_installable(profile_context, server):
    page = profile_context.pages[0] if profile_context.pages else profile_context.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(server.url)
    assert page.evaluate(WORKER_ACTIVATED) == "activated"
    page.reload()
    page.wait_for_selector("#status.pill-ok")
    assert page.evaluate("navigator.serviceWorker.controller.scriptURL") == server.url + "/sw.js"
    cdp = profile_context.new_cdp_session(page)
    manifest = cdp.send("Page.getAppManifest")
    assert manifest["url"] == server.url + "/manifest.webmanifest" and manifest["errors"] == []
    assert manifest["manifest"]["display"] == "kStandalone" and manifest["manifest"]["startUrl"] == server.url + "/"
    assert cdp.send("Page.getInstallabilityErrors")["installabilityErrors"] == []
    # one cache, named after this version, holding the shell and nothing of the API, even after the page used it
    cached = page.evaluate(CACHED_PATHS)
    assert len(cached) == 1 and next(iter(cached)).startswith(f"lmforge-shell-{lmforge.__version__}-"), cached
    paths = next(iter(cached.values()))
    assert set(paths) == SHELL and not [p for p in paths if p.startswith(NETWORK_ONLY)], paths
    assert failed == []


def test_offline_the_installed_app_says_how_to_start_the_server_at_phone_width(browser, classify_run):
    from playwright.sync_api import (
        Error as PlaywrightError,  # imported here: without it the module still skips
    )

    port = free_port()
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    with LiveServer(f"sentiment={classify_run}", port=port) as live:
        page.goto(live.url)
        assert page.evaluate(WORKER_ACTIVATED) == "activated"
        page.reload()  # now the worker controls the page
        page.wait_for_selector("#status.pill-ok")
        assert page.evaluate("navigator.serviceWorker.controller !== null")
    # the server is gone: API calls fail, none is answered from a cache
    for path in ("/health/ready", "/v1/models", "/metrics"):
        assert page.evaluate(f"fetch('{path}').then((r) => r.status, () => 'unreachable')") == "unreachable", path
    # opening the app shows the offline page (from the worker's cache), not the browser's error page
    page.goto(live.url)
    page.wait_for_selector("h1:has-text('cannot be reached')")
    assert page.url == live.url + "/" and page.title() == "lmforge — server unreachable"
    assert page.locator("#command").inner_text() == f"lmforge serve RUN --port {port}"
    assert page.locator("#origin").inner_text() == live.url
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.evaluate("getComputedStyle(document.querySelector('.card')).borderRadius") == "12px"  # styled, cached
    page.screenshot(path=str(ARTIFACTS / "web-ui-offline-phone.png"), full_page=True)
    # the API docs are never intercepted: with no server, the browser's own error
    docs = context.new_page()
    with pytest.raises(PlaywrightError, match="ERR_CONNECTION_REFUSED"):
        docs.goto(live.url + "/docs")
    docs.close()
    # the server comes back on the same port: the offline page retries by itself and opens the app
    with LiveServer(f"sentiment={classify_run}", port=port):
        page.wait_for_selector("#status.pill-ok", timeout=30_000)
        assert page.title() == "lmforge" and page.locator("#model").input_value() == "sentiment"
    context.close()

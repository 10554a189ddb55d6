// lmforge web UI: plain JavaScript, no build step. Talks to the same server's REST API.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  models: [],
  key: localStorage.getItem("lmforge.key") || "",
  history: JSON.parse(localStorage.getItem("lmforge.history") || "[]"),
  ready: false,
  chat: [],
  abort: null,
};

// ------------------------------------------------------------------ API
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

function headers(json = true) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers(!!options.body), ...(options.headers || {}) } });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    offline(true);
    throw new ApiError(0, "Cannot reach the lmforge server. Is `lmforge serve` still running?");
  }
  offline(false);
  if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
  return response;
}

async function errorDetail(response) {
  let text = "";
  try {
    text = await response.text();
    const body = JSON.parse(text);
    if (typeof body.detail === "string") return body.detail;
    if (body.error && body.error.message) return body.error.message;
    if (body.detail) return JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}${text ? ": " + text.slice(0, 200) : ""}`;
}

function explain(err) {
  if (err.status === 401) return "The server needs an API key (401). Set it with the “API key” button.";
  if (err.status === 429) return "The server is busy (429). Try again in a moment.";
  if (err.status === 503) return "The server is not ready yet (503): " + err.detail;
  return err.status ? `${err.detail} (${err.status})` : err.detail || String(err);
}

// ------------------------------------------------------------------ status and errors
function offline(isOffline) {
  const banner = $("#banner");
  if (isOffline) {
    banner.textContent = `Cannot reach the lmforge server at ${location.origin}. Is \`lmforge serve\` still running? Retrying…`;
    banner.hidden = false;
    setStatus("offline", "bad");
  } else if (!banner.dataset.sticky) {
    banner.hidden = true;
  }
}

function setStatus(text, kind) {
  const el = $("#status");
  el.textContent = text;
  el.className = "pill pill-" + kind;
}

function showError(el, message) {
  el.textContent = message;
  el.hidden = !message;
}

async function pollReady() {
  try {
    const response = await fetch("/health/ready");
    offline(false);
    if (response.ok) {
      if (!state.ready) {
        state.ready = true;
        setStatus("ready", "ok");
        await loadModels();
      }
    } else {
      state.ready = false;
      setStatus(response.status === 503 ? "loading models…" : "not ready", "wait");
    }
  } catch (_) {
    state.ready = false;
    offline(true);
  }
  setTimeout(pollReady, state.ready ? 10000 : 1500);
}

// ------------------------------------------------------------------ models and model card
// each model card lists the routes that answer it (from its task in the server's task registry)
const answers = (route) => (m) => (m.routes || []).includes(route);

async function loadModels() {
  try {
    const body = await (await api("/v1/models")).json();
    state.models = body.data;
  } catch (err) {
    showError($("#form-error"), explain(err));
    return;
  }
  renderServed();
  const classifiers = state.models.filter(answers("classify"));
  const generators = state.models.filter(answers("openai"));
  const chatters = generators.filter((m) => m.chat);
  fill($("#model"), classifiers);
  fill($("#chat-model"), chatters.length ? chatters : generators, (m) => m.chat);
  fill($("#complete-model"), generators, (m) => !m.chat);
  const hasClassify = classifiers.length > 0;
  const hasGen = generators.length > 0;
  $("#tab-classify").hidden = !hasClassify;
  $("#tab-chat").hidden = !hasGen;
  $("#tab-complete").hidden = !hasGen;
  for (const page of document.querySelectorAll("section[data-route]")) {
    const served = state.models.filter(answers(page.dataset.route));
    fill(page.querySelector('[data-slot="model"]'), served);
    $("#tab-" + page.dataset.route).hidden = served.length === 0;
  }
  await loadKb();
  const current = document.querySelector('[role="tab"][aria-selected="true"]');
  if (!current || current.hidden) selectTab(document.querySelector('[role="tab"]:not([hidden])'));
  if (hasClassify) await showCard($("#model").value);
}

function renderServed() {
  // every served model with what `lmforge models list` shows for it
  const millions = (n) => (n ? `${(n / 1e6).toFixed(1)}M` : "–");
  $("#served tbody").replaceChildren(...state.models.map((m) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${esc(m.id)}</td><td>${esc(m.task)}</td><td>${esc(m.family || "–")}</td>` +
      `<td class="num">${millions(m.parameters)}</td><td class="num">${m.size_mb != null ? m.size_mb.toFixed(1) + " MB" : "–"}</td>`;
    return tr;
  }));
}

function fill(select, models, prefer = () => false) {
  const previous = select.value;
  select.replaceChildren(...models.map((m) => new Option(`${m.id} (${m.task})`, m.id)));
  const preferred = models.find((m) => m.id === previous) || models.find(prefer);
  if (preferred) select.value = preferred.id;
}

function fmt(x, digits = 3) {
  return typeof x === "number" ? x.toFixed(digits) : "—";
}

async function showCard(name) {
  const body = $("#card-body");
  if (!name) { body.innerHTML = '<p class="muted">No classification model loaded.</p>'; return; }
  let card;
  try {
    card = await (await api("/v1/models/" + encodeURIComponent(name))).json();
  } catch (err) {
    body.textContent = explain(err);
    return;
  }
  $("#card-title").textContent = card.id;
  const m = card.metrics || {};
  const parts = [];
  parts.push(`<dl class="kv"><dt>task</dt><dd>${esc(card.task)}</dd>` +
    (card.max_length ? `<dt>max length</dt><dd>${card.max_length} tokens</dd>` : "") +
    (card.config && card.config.created ? `<dt>trained</dt><dd>${esc(card.config.created)}</dd>` : "") + "</dl>");
  if (card.labels) {
    parts.push(`<h2 style="margin-top:.8rem">Labels</h2><div class="chips">${card.labels.map((l) => `<span class="chip">${esc(l)}</span>`).join("")}</div>`);
  }
  if (m.accuracy !== undefined || m.perplexity !== undefined) {
    const tiles = [];
    if (m.accuracy !== undefined) tiles.push(["accuracy", fmt(m.accuracy)]);
    if (m.macro_f1 !== undefined) tiles.push(["macro-F1", fmt(m.macro_f1)]);
    if (m.baseline) tiles.push([`majority baseline`, fmt(m.baseline.accuracy)]);
    if (m.perplexity !== undefined) tiles.push(["perplexity", fmt(m.perplexity, 2)]);
    if (m.n !== undefined) tiles.push(["examples", String(m.n)]);
    parts.push(`<h2>Evaluation${m.data ? ` <span class="hint">on ${esc(m.data)}</span>` : ""}</h2>` +
      `<div class="metrics">${tiles.map(([k, v]) => `<div class="metric"><b>${v}</b><span>${esc(k)}</span></div>`).join("")}</div>`);
  } else {
    parts.push('<p class="muted">Not evaluated yet: run <code>lmforge evaluate RUN --data …</code>.</p>');
  }
  if (card.curve && card.curve.length > 1) {
    parts.push(`<h2>Training curve</h2>${curveSvg(card.curve, card.eval_curve, card.eval_metric)}`);
  }
  if (card.bias) {
    // lmforge probe bias: how the label's probability moves when only the group a text mentions changes
    const rows = Object.entries(card.bias).flatMap(([set, groups]) => Object.entries(groups).map(([g, r]) =>
      `<tr${r.flagged ? ' class="flagged" title="a consistent difference: its 95% interval excludes no change"' : ""}><td>${esc(set)}</td><td>${esc(g)}${r.flagged ? " ⚑" : ""}</td><td class="num">${r.mean_change >= 0 ? "+" : ""}${fmt(r.mean_change, 4)}</td><td class="num">${fmt(r.flip_rate, 3)}</td></tr>`));
    parts.push(`<h2>Bias probe</h2><div class="bias-table"><table class="bias"><thead><tr><th>set</th><th>group</th><th>mean change</th><th>flip rate</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>`);
  }
  body.innerHTML = parts.join("");
}

function curveSvg(points, evalPoints, evalMetric) {
  const W = 320, H = 150, L = 34, B = 20, T = 8, R = 8;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => L + ((x - x0) / Math.max(1e-9, x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / Math.max(1e-9, y1 - y0)) * (H - T - B);
  const path = points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
  let evalPath = "";
  if (evalPoints && evalPoints.length > 1) {
    const ev = evalPoints.map((p) => p[1]);
    const e0 = Math.min(...ev), e1 = Math.max(...ev);
    const ey = (y) => T + (1 - (y - e0) / Math.max(1e-9, e1 - e0)) * (H - T - B);
    evalPath = `<path class="eval" d="${evalPoints.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${ey(p[1]).toFixed(1)}`).join("")}"/>` +
      `<text class="eval-label" x="${W - R}" y="${T + 8}" text-anchor="end">${esc(evalMetric)} ${fmt(e1)}</text>` +
      `<text class="eval-label" x="${W - R}" y="${H - B - 4}" text-anchor="end">${fmt(e0)}</text>`;
  }
  return `<svg class="curve" viewBox="0 0 ${W} ${H}" role="img" aria-label="training loss from ${fmt(ys[0])} to ${fmt(ys[ys.length - 1])} over ${x1} steps">
    <line class="axis" x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}"/><line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>
    <text x="${L - 4}" y="${T + 8}" text-anchor="end">${fmt(y1, 2)}</text><text x="${L - 4}" y="${H - B}" text-anchor="end">${fmt(y0, 2)}</text>
    <text x="${L}" y="${H - 5}">step ${x0}</text><text x="${W - R}" y="${H - 5}" text-anchor="end">${x1}</text>
    <path class="line" d="${path}"/>${evalPath}</svg>
    <p class="hint">solid: train loss${evalPath ? ` · dashed: dev ${esc(evalMetric)}` : ""}</p>`;
}

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// ------------------------------------------------------------------ classify
function renderResults(inputs, results) {
  const box = $("#results");
  box.replaceChildren();
  results.forEach((r, i) => {
    const item = document.createElement("div");
    item.className = "result";
    const probs = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
    item.innerHTML = `
      ${inputs.length > 1 ? `<div class="text">${esc(inputs[i])}</div>` : ""}
      <div class="top"><span class="label-badge" data-label>${esc(r.label)}</span>
        <span class="score">${(100 * r.score).toFixed(1)}%</span>
        ${r.windows > 1 ? `<span class="muted windows" title="the text was longer than the model reads at once">read in ${r.windows} windows</span>` : ""}</div>
      <div class="bars">${probs.map(([label, p]) => `
        <span>${esc(label)}</span>
        <div class="bar ${label === r.label ? "top" : ""}" role="progressbar" aria-label="${esc(label)}"
             aria-valuemin="0" aria-valuemax="100" aria-valuenow="${Math.round(100 * p)}"><span style="width:${(100 * p).toFixed(1)}%"></span></div>
        <span class="pct">${(100 * p).toFixed(1)}%</span>`).join("")}</div>
      <div class="row"><button type="button" class="ghost small why-button">Why?</button>
        <select class="why-method" aria-label="attribution method"><option value="integrated-gradients">integrated gradients</option><option value="occlusion">occlusion</option></select></div>
      <div class="why" hidden></div>`;
    item.querySelector(".why-button").addEventListener("click", () =>
      whyPrediction(item, inputs[i], item.querySelector(".why-method").value));
    box.appendChild(item);
  });
}

// ------------------------------------------------------------------ explanations: word scores and attention
async function whyPrediction(item, text, method) {
  const box = item.querySelector(".why");
  box.hidden = false;
  box.innerHTML = '<p class="muted">Explaining…</p>';
  try {
    const response = await api("/v1/explain", {
      method: "POST", body: JSON.stringify({ model: $("#model").value || null, text, method, attention: true }),
    });
    renderWhy(box, text, await response.json());
  } catch (err) {
    box.innerHTML = `<p class="error">${esc(explain(err))}</p>`;
  }
}

function renderWhy(box, text, result) {
  const top = Math.max(...result.words.map((w) => Math.abs(w.score)), 1e-12);
  let html = "", cursor = 0;
  for (const w of result.words) {
    const alpha = Math.min(1, Math.abs(w.score) / top).toFixed(2);
    const rgb = w.score >= 0 ? "21,127,59" : "180,35,24";
    html += esc(text.slice(cursor, w.start)) +
      `<mark class="attr" style="background:rgba(${rgb},${alpha})" title="${w.score.toFixed(4)}" data-score="${w.score}">${esc(text.slice(w.start, w.end))}</mark>`;
    cursor = w.end;
  }
  html += esc(text.slice(cursor));
  const a = result.attention;
  const options = (n, label) => Array.from({ length: n }, (_, i) => `<option value="${i}">${label} ${i}</option>`).join("");
  box.innerHTML = `<p class="muted">Words pushing toward <b>${esc(result.target)}</b> are green, against it red (${esc(result.method)}).</p>
    <p class="attributed">${html}</p>
    ${a ? `<div class="row wrap"><span class="muted">Attention</span>
      <select class="att-layer" aria-label="layer">${options(a.layers, "layer")}</select>
      <select class="att-head" aria-label="head">${options(a.heads, "head")}</select></div>
      <div class="attention-map"></div>` : ""}`;
  if (!a) return;
  const layer = box.querySelector(".att-layer"), head = box.querySelector(".att-head");
  layer.value = String(a.layers - 1);
  const draw = () => drawAttention(box.querySelector(".attention-map"), a.tokens, a.weights[layer.value][head.value]);
  layer.addEventListener("change", draw);
  head.addEventListener("change", draw);
  draw();
}

function drawAttention(holder, tokens, matrix) {
  // an SVG heatmap: row i is token i's attention over the tokens (each row sums to 1)
  const cell = 14, pad = 90, n = tokens.length, size = pad + n * cell;
  const top = Math.max(...matrix.flat(), 1e-9);  // shaded against the largest weight: a flat head still shows
  let cells = "";
  matrix.forEach((row, i) => row.forEach((w, j) => {
    cells += `<rect x="${pad + j * cell}" y="${pad + i * cell}" width="${cell}" height="${cell}" fill="rgba(43,89,195,${(w / top).toFixed(3)})"><title>${esc(tokens[i])} → ${esc(tokens[j])}: ${w.toFixed(3)}</title></rect>`;
  }));
  const labels = tokens.map((t, i) =>
    `<text x="${pad - 4}" y="${pad + i * cell + cell - 3}" text-anchor="end">${esc(t)}</text>` +
    `<text transform="translate(${pad + i * cell + cell - 3},${pad - 4}) rotate(-90)">${esc(t)}</text>`).join("");
  holder.innerHTML = `<svg class="heatmap" width="${size}" height="${size}" viewBox="0 0 ${size} ${size}" role="img" aria-label="attention weights">${cells}${labels}</svg>`;
}

function renderHistory() {
  const list = $("#history");
  list.replaceChildren(...state.history.map((h) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="h-label">${esc(h.label)}</span><span class="score">${(100 * h.score).toFixed(0)}%</span><span class="h-text" title="${esc(h.text)}">${esc(h.text)}</span>`;
    return li;
  }));
  if (!state.history.length) list.innerHTML = '<li class="muted">Nothing yet.</li>';
}

async function classify(event) {
  event.preventDefault();
  const button = $("#submit");
  const raw = $("#text").value;
  const inputs = $("#per-line").checked ? raw.split("\n").map((s) => s.trim()).filter(Boolean) : [raw.trim()];
  showError($("#form-error"), "");
  if (!inputs.length || !inputs[0]) { showError($("#form-error"), "Type some text first."); return; }
  button.disabled = true;
  button.textContent = "Classifying…";
  try {
    const response = await api("/v1/classify", {
      method: "POST",
      body: JSON.stringify({ model: $("#model").value || null, inputs, truncate: $("#truncate").checked }),
    });
    const body = await response.json();
    renderResults(inputs, body.results);
    body.results.forEach((r, i) => state.history.unshift({ text: inputs[i], label: r.label, score: r.score }));
    state.history = state.history.slice(0, 30);
    localStorage.setItem("lmforge.history", JSON.stringify(state.history));
    renderHistory();
  } catch (err) {
    showError($("#form-error"), explain(err));
  } finally {
    button.disabled = false;
    button.textContent = "Classify";
  }
}

// ------------------------------------------------------------------ translate and summarize
function buildSeq2seqPage(page) {
  const form = $("#seq2seq-template").content.firstElementChild.cloneNode(true);
  const slot = (name) => form.querySelector(`[data-slot="${name}"]`);
  const route = page.dataset.route;
  slot("title").textContent = page.dataset.title;
  slot("submit").textContent = page.dataset.title;
  slot("input").placeholder = page.dataset.placeholder;
  for (const label of form.querySelectorAll("[data-for]")) {  // ids unique per page
    const target = slot(label.dataset.for);
    target.id = `${route}-${label.dataset.for}`;
    label.htmlFor = target.id;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const raw = slot("input").value;
    const inputs = slot("per-line").checked ? raw.split("\n").map((s) => s.trim()).filter(Boolean) : [raw.trim()];
    showError(slot("error"), "");
    if (!inputs.length || !inputs[0]) { showError(slot("error"), "Type some text first."); return; }
    const button = slot("submit");
    button.disabled = true;
    button.textContent = "Working…";
    try {
      const response = await api("/v1/" + route, {
        method: "POST",
        body: JSON.stringify({ model: slot("model").value || null, inputs, truncate: true,
                               num_beams: Number(slot("beams").value) || 1,
                               max_new_tokens: Number(slot("max-tokens").value) || 128,
                               shots: slot("shots").value === "" ? null : Number(slot("shots").value) }),
      });
      const body = await response.json();
      slot("outputs").replaceChildren(...body.results.map((r, i) => {
        const li = document.createElement("li");
        li.innerHTML = `${inputs.length > 1 ? `<div class="text">${esc(inputs[i])}</div>` : ""}<div class="output">${esc(r.text) || '<span class="muted">(empty)</span>'}</div>`;
        return li;
      }));
    } catch (err) {
      showError(slot("error"), explain(err));
    } finally {
      button.disabled = false;
      button.textContent = page.dataset.title;
    }
  });
  slot("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  page.appendChild(form);
}

// ------------------------------------------------------------------ streaming (chat and completions)
async function* sse(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function renderChat() {
  const list = $("#messages");
  list.replaceChildren(...state.chat.map((m) => {
    const li = document.createElement("li");
    li.className = "msg " + m.role + (m.streaming ? " streaming" : "");
    li.textContent = m.content;
    return li;
  }));
  list.scrollTop = list.scrollHeight;
}

async function sendChat(event) {
  event.preventDefault();
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text || state.abort) return;
  showError($("#chat-error"), "");
  state.chat.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "", streaming: true };
  state.chat.push(reply);
  input.value = "";
  renderChat();
  state.abort = new AbortController();
  $("#chat-send").disabled = true;
  $("#chat-stop").hidden = false;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      signal: state.abort.signal,
      body: JSON.stringify({
        model: $("#chat-model").value,
        messages: state.chat.filter((m) => m !== reply).map(({ role, content }) => ({ role, content })),
        stream: true,
        temperature: Number($("#chat-temperature").value),
        top_p: Number($("#chat-top-p").value),
        max_tokens: Number($("#chat-max-tokens").value),
      }),
    });
    for await (const chunk of sse(response)) {
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        reply.content += delta.content;
        renderChat();
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") showError($("#chat-error"), explain(err));
  } finally {
    reply.streaming = false;
    if (!reply.content) reply.content = "(no reply)";
    state.abort = null;
    $("#chat-send").disabled = false;
    $("#chat-stop").hidden = true;
    renderChat();
    input.focus();
  }
}

async function complete(event) {
  event.preventDefault();
  const out = $("#completion");
  const prompt = $("#prompt").value;
  showError($("#complete-error"), "");
  out.innerHTML = `<span class="prompt-part">${esc(prompt)}</span>`;
  const generated = document.createElement("span");
  out.appendChild(generated);
  $("#complete-submit").disabled = true;
  try {
    const response = await api("/v1/completions", {
      method: "POST",
      body: JSON.stringify({
        model: $("#complete-model").value, prompt, stream: true,
        temperature: Number($("#complete-temperature").value), max_tokens: Number($("#complete-max-tokens").value),
      }),
    });
    for await (const chunk of sse(response)) {
      if (chunk.choices && chunk.choices[0]) generated.textContent += chunk.choices[0].text || "";
    }
  } catch (err) {
    showError($("#complete-error"), explain(err));
  } finally {
    $("#complete-submit").disabled = false;
  }
}

// ------------------------------------------------------------------ ask the docs (a server started with --kb)
// readers: chat models write an answer citing [n]; extractive QA runs give a span from one passage
const readers = () => state.models.filter((m) => (answers("openai")(m) && m.chat) || answers("qa")(m));

async function loadKb() {
  let kb = null;
  try {
    kb = await (await api("/v1/kb")).json();
  } catch (_) { /* no knowledge base on this server: 404 */ }
  $("#tab-ask").hidden = !kb;
  if (!kb) return;
  $("#kb-info").textContent = `${kb.passages.toLocaleString()} passages (${kb.size_mb} MB), searched by words and by meaning (${kb.model}).`;
  fill($("#ask-reader"), readers(), (m) => m.chat);
}

function citeLinks(text) {
  // [1] and [1, 2] become links to the passages they name
  return esc(text).replace(/\[(\d+(?:\s*[,;]\s*\d+)*)\]/g, (whole, group) =>
    "[" + group.split(/\s*[,;]\s*/).map((n) => `<a href="#passage-${n}" class="cite" data-n="${n}">${n}</a>`).join(", ") + "]");
}

function renderPassages(passages, cited = []) {
  $("#passages").replaceChildren(...passages.map((p) => {
    const li = document.createElement("li");
    li.id = "passage-" + p.n;
    li.className = "passage" + (cited.includes(p.n) ? " cited" : "");
    li.innerHTML = `<div class="row spread"><strong>[${p.n}] ${esc(p.title || p.id)}</strong>` +
      `<span class="muted">${esc(p.id)} · similarity ${fmt(p.similarity, 2)}</span></div><p>${esc(p.text)}</p>`;
    return li;
  }));
}

async function askDocs(event) {
  event.preventDefault();
  const question = $("#ask-question").value.trim();
  if (!question) return;
  showError($("#ask-error"), "");
  const answer = $("#answer");
  answer.textContent = "";
  renderPassages([]);
  $("#ask-submit").disabled = true;
  let text = "";
  try {
    const response = await api("/v1/kb/ask", {
      method: "POST",
      body: JSON.stringify({ question, reader: $("#ask-reader").value || null, k: Number($("#ask-k").value),
                             mode: $("#ask-mode").value, stream: true }),
    });
    for await (const event of sse(response)) {
      if (event.type === "passages") renderPassages(event.passages);
      else if (event.type === "delta") { text += event.text; answer.textContent = text; }
      else if (event.type === "done") {
        answer.innerHTML = citeLinks(event.answer) + (event.found ? "" : ' <span class="muted">(nothing in the knowledge base is close enough)</span>');
        const cited = event.citations.map((c) => c.n);
        event.citations.filter((c) => c.matched).forEach((c) => answer.querySelectorAll(`.cite[data-n="${c.n}"]`)
          .forEach((a) => { a.classList.add("matched"); a.title = "added by lmforge: most of this sentence's words are in this passage"; }));
        document.querySelectorAll("#passages .passage").forEach((li) =>
          li.classList.toggle("cited", cited.includes(Number(li.id.slice(8)))));
      } else if (event.type === "error") showError($("#ask-error"), event.detail);
    }
  } catch (err) {
    showError($("#ask-error"), explain(err));
  } finally {
    $("#ask-submit").disabled = false;
  }
}

// ------------------------------------------------------------------ tabs, key dialog, wiring
function selectTab(tab) {
  if (!tab) return;
  document.querySelectorAll('[role="tab"]').forEach((t) => {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    document.getElementById(t.getAttribute("aria-controls")).hidden = !selected;
  });
}

function wire() {
  document.querySelectorAll("section[data-route]").forEach(buildSeq2seqPage);
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
      const visible = tabs.filter((t) => !t.hidden);
      const next = visible[(visible.indexOf(tab) + (e.key === "ArrowRight" ? 1 : visible.length - 1)) % visible.length];
      selectTab(next);
      next.focus();
    });
  });
  $("#classify-form").addEventListener("submit", classify);
  $("#text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("#classify-form").requestSubmit();
  });
  $("#model").addEventListener("change", () => showCard($("#model").value));
  $("#clear-history").addEventListener("click", () => {
    state.history = [];
    localStorage.removeItem("lmforge.history");
    renderHistory();
  });
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); }
  });
  $("#chat-stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("#chat-reset").addEventListener("click", () => { state.chat = []; renderChat(); });
  $("#complete-form").addEventListener("submit", complete);
  $("#ask-form").addEventListener("submit", askDocs);
  $("#answer").addEventListener("click", (e) => {
    const link = e.target.closest("a.cite");
    if (!link) return;
    e.preventDefault();
    const target = document.getElementById("passage-" + link.dataset.n);
    if (!target) return;
    target.scrollIntoView({ behavior: "smooth", block: "nearest" });
    target.classList.add("flash");
    setTimeout(() => target.classList.remove("flash"), 1200);
  });
  const dialog = $("#key-dialog");
  $("#key-button").addEventListener("click", () => { $("#key-input").value = state.key; dialog.showModal(); });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue !== "save") return;
    state.key = $("#key-input").value.trim();
    if (state.key) localStorage.setItem("lmforge.key", state.key); else localStorage.removeItem("lmforge.key");
    state.ready = false;
    loadModels();
  });
  renderHistory();
}

// ------------------------------------------------------------------ installable app (PWA)
// the service worker (sw.js) keeps the shell for the installed app and shows an offline page when the server is
// down; it never touches API calls. Where it cannot register (an insecure origin, an old browser) the page works as is.
function registerServiceWorker() {
  const failed = (err) => console.warn("lmforge: the service worker did not register:", err);
  try {
    if ("serviceWorker" in navigator) navigator.serviceWorker.register("/sw.js").catch(failed);
  } catch (err) { failed(err); }  // navigator.serviceWorker itself throws in some sandboxed frames
}

wire();
pollReady();
window.addEventListener("load", registerServiceWorker);

// lmforge service worker: keeps the web UI's shell on the device so the installed app opens, and says so when the
// server cannot be reached. The API (/v1, /health, /metrics, the docs) is never cached nor intercepted: it always
// goes to the network. The server fills in CACHE_VERSION (lmforge's version + a digest of these files), so an
// upgrade installs a new worker, which fills a new cache and deletes the old ones.
"use strict";

const CACHE_VERSION = "__LMFORGE_CACHE_VERSION__";
const CACHE = "lmforge-shell-" + CACHE_VERSION;
const OFFLINE = "/offline.html";
const SHELL = [
  "/", OFFLINE, "/manifest.webmanifest", "/static/app.js", "/static/app.css",
  "/static/icons/icon-192.png", "/static/icons/icon-512.png", "/static/icons/icon-maskable-512.png",
  "/static/icons/apple-touch-icon.png",
];
const NETWORK_ONLY = ["/v1", "/health", "/metrics", "/docs", "/docs-assets", "/redoc", "/openapi.json"];

const networkOnly = (path) => NETWORK_ONLY.some((p) => path === p || path.startsWith(p + "/"));

self.addEventListener("install", (event) => {
  // cache: "reload" skips the HTTP cache, so the new cache holds what this server serves now
  event.waitUntil(caches.open(CACHE)
    .then((cache) => cache.addAll(SHELL.map((url) => new Request(url, { cache: "reload" }))))
    .then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys().then((names) => Promise.all(
    names.filter((name) => name.startsWith("lmforge-shell-") && name !== CACHE).map((name) => caches.delete(name)))));
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin || networkOnly(url.pathname)) return;
  if (request.mode === "navigate") {
    event.respondWith(navigate(request, url));
  } else if (url.pathname.startsWith("/static/") || SHELL.includes(url.pathname)) {
    event.respondWith(cacheFirst(request));
  }
  // anything else: not intercepted, the browser asks the network as it would without this worker
});

// pages: the network first (always the server's current page); when it cannot be reached, the offline page
async function navigate(request, url) {
  try {
    const response = await fetch(request);
    if (response.ok && url.pathname === "/") {
      const copy = response.clone();
      caches.open(CACHE).then((cache) => cache.put("/", copy));
    }
    return response;
  } catch (err) {
    const cache = await caches.open(CACHE);
    return (await cache.match(OFFLINE)) || (await cache.match("/")) || Response.error();
  }
}

// the shell's files: from the cache (filled at install, per version); a miss is fetched and kept
async function cacheFirst(request) {
  const cache = await caches.open(CACHE);
  const cached = await cache.match(request);
  if (cached) return cached;
  const response = await fetch(request);
  if (response.ok) cache.put(request, response.clone());
  return response;
}

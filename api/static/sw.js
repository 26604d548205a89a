// The worker app's service worker (served at /sw.js, scope /worker): the app shell for offline use, the last
// task and patrol lists for reading them without signal (v2: patrols and the report form's places), and Web Push
// notifications that open the task when tapped.
"use strict";

const VERSION = "gridhub-worker-v2";
const SHELL = `${VERSION}-shell`;
const API = `${VERSION}-api`;
const SHELL_FILES = ["/worker", "/static/common.js", "/static/outbox.js", "/static/worker.js", "/static/worker.css",
                     "/static/manifest.webmanifest", "/static/icons/icon-192.png", "/static/icons/icon-512.png"];
// GET answers kept for reading offline (the newest wins): the person, the task and patrol lists and tasks, and the
// places the hazard report form offers (buildings, units); the stream and images are never cached.
const API_CACHED = [/^\/api\/v1\/me$/, /^\/api\/v1\/tasks(\/[^/]+)?$/, /^\/api\/v1\/map\/buildings$/,
                    /^\/api\/v1\/units$/, /^\/api\/v1\/reports$/];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((c) => c.addAll(SHELL_FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (!name.startsWith(VERSION)) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

// The page asks to forget the cached answers at log-out (they are the person's own).
self.addEventListener("message", (event) => {
  const msg = event.data || {};
  if (msg.type === "log-out") event.waitUntil(caches.delete(API));
});

// The network first, so that a new version and fresh tasks win; the cache when there is no signal.
async function networkFirst(request, cacheName) {
  try {
    const response = await fetch(request);
    if (response.ok) {
      const cache = await caches.open(cacheName);
      await cache.put(request, response.clone());
    }
    return response;
  } catch (e) {
    const cached = await caches.match(request, { ignoreSearch: false });
    if (cached) return cached;
    throw e;
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate" && url.pathname === "/worker") {
    event.respondWith(networkFirst(request, SHELL).catch(() => caches.match("/worker")));
  } else if (url.pathname.startsWith("/static/")) {
    event.respondWith(networkFirst(request, SHELL));
  } else if (API_CACHED.some((re) => re.test(url.pathname))) {
    event.respondWith(networkFirst(request, API));
  }
});

// The task's link on this hub, whatever address the sender was configured with.
function taskUrl(data) {
  if (data && data.task_id) return `/worker#task=${encodeURIComponent(data.task_id)}`;
  try {
    const u = new URL(data && data.url, self.location.origin);
    if (u.origin === self.location.origin) return u.pathname + u.hash;
  } catch (e) { /* not a URL */ }
  return "/worker";
}

self.addEventListener("push", (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch (e) { data = { body: event.data ? event.data.text() : "" }; }
  const critical = data.severity === "critical";
  const title = data.title || "网格任务";
  const options = {
    body: data.body || "",
    tag: data.task_id ? `task-${data.task_id}` : undefined,
    renotify: Boolean(data.task_id),
    icon: "/static/icons/icon-192.png",
    badge: "/static/icons/icon-192.png",
    lang: "zh-CN",
    requireInteraction: critical,
    vibrate: critical ? [400, 150, 400, 150, 800] : [200],
    timestamp: Date.now(),
    data: { url: taskUrl(data), task_id: data.task_id || null, severity: data.severity || null,
            delivery_id: data.delivery_id || null },
  };
  event.waitUntil(self.registration.showNotification(title, options));
});

// A tap: the open worker page shows the task (no reload); none open: open it at the task.
async function openTask(url) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const page = windows.find((w) => new URL(w.url).pathname === "/worker");
  if (page) {
    page.postMessage({ type: "open-task", url });
    return page.focus().catch(() => page);  // focusing needs a real tap
  }
  return self.clients.openWindow(url);
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  const done = openTask(data.url || "/worker");
  try { event.waitUntil(done); } catch (e) { /* an event made by a test, not the browser: nothing to extend */ }
});

// The worker page's outbox: actions, notes and photos taken without signal wait in IndexedDB, each with its
// Idempotency-Key and the time the person acted (X-Gridhub-Client-Time), and are sent in the order they were taken.
// The hub answers a key it has seen with its first answer, so a write sent twice (the answer lost on the way back)
// is done once.
"use strict";

const Outbox = (() => {
  const DB = "gridhub-worker";
  const STORE = "outbox";
  let dbPromise = null;

  function open() {
    if (!dbPromise) {
      dbPromise = new Promise((resolve, reject) => {
        const req = indexedDB.open(DB, 1);
        req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "seq", autoIncrement: true });
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return dbPromise;
  }

  async function tx(mode, work) {
    const db = await open();
    return new Promise((resolve, reject) => {
      const t = db.transaction(STORE, mode);
      const store = t.objectStore(STORE);
      let out;
      Promise.resolve(work(store)).then((v) => { out = v; });
      t.oncomplete = () => resolve(out);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error);
    });
  }

  function all(store) {
    return new Promise((resolve, reject) => {
      const req = store.getAll();
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  function newKey() {
    if (crypto.randomUUID) return `w-${crypto.randomUUID()}`;
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "w-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // An entry: { who, task_id, kind: "action" | "photo", action, body, photo (Blob), note, key, client_time }.
  async function add(entry) {
    const item = Object.assign({ key: newKey(), client_time: new Date().toISOString() }, entry);
    await tx("readwrite", (store) => { store.add(item); });
    return item;
  }

  // The person's entries, oldest first.
  async function list(who) {
    const items = await tx("readonly", all);
    return (items || []).filter((i) => i.who === who).sort((a, b) => a.seq - b.seq);
  }

  async function remove(seq) {
    await tx("readwrite", (store) => { store.delete(seq); });
  }

  // The request of an entry; throws GH.ApiError (status 0 when the network failed).
  function send(item) {
    const headers = { "Idempotency-Key": item.key, "X-Gridhub-Client-Time": item.client_time };
    const path = `/api/v1/tasks/${encodeURIComponent(item.task_id)}`;
    if (item.kind === "photo") {
      const form = new FormData();
      form.append("photo", item.photo, item.photo_name || "photo.jpg");
      if (item.note) form.append("note", item.note);
      return GH.request(`${path}/photos`, { method: "POST", body: form, headers });
    }
    headers["Content-Type"] = "application/json";
    return GH.request(`${path}/${item.action}`, { method: "POST", headers, body: JSON.stringify(item.body || {}) });
  }

  let running = null;

  // Send the person's entries in order. A network failure stops (they wait for the signal); an answer 5xx stops
  // too (retried later); a refusal (4xx: the task moved on meanwhile, 409) is dropped with its reason; 401 stops
  // (log in again: the entries stay). `onSent(item, answer)`, `onDropped(item, error)`, `onStopped(item, error)`.
  function flush(who, hooks) {
    if (running) return running;
    running = (async () => {
      let sent = 0;
      try {
        for (const item of await list(who)) {
          let answer;
          try {
            answer = await send(item);
          } catch (e) {
            if (e.status >= 400 && e.status < 500 && e.status !== 401 && e.status !== 408 && e.status !== 429) {
              await remove(item.seq);
              if (hooks.onDropped) hooks.onDropped(item, e);
              continue;
            }
            if (hooks.onStopped) hooks.onStopped(item, e);
            break;
          }
          await remove(item.seq);
          sent += 1;
          if (hooks.onSent) hooks.onSent(item, answer);
        }
      } finally {
        running = null;
      }
      return sent;
    })();
    return running;
  }

  return { add, list, remove, flush, send, newKey };
})();

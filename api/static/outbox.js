// The worker page's outbox: actions, notes, photos, patrol submissions and hazard reports taken without signal wait
// in IndexedDB, each with its Idempotency-Key and the time the person acted (X-Gridhub-Client-Time), and are sent in
// the order they were taken. The hub answers a key it has seen with its first answer, so a write sent twice (the
// answer lost on the way back) is done once.
//
// A patrol submission is one entry (kind "patrol"): its photos, then the resolve whose checklist names the photos'
// evidence ids, which exist only once the photos are uploaded. Sending it uploads each photo not yet uploaded (each
// with a key of its own derived from the entry's, so a retry gets the same evidence id back), writes the id into the
// entry (kept in IndexedDB, so a retry after a lost signal skips what arrived), then resolves. Nothing else of the
// person's is sent between them, and a refusal of any part drops the whole entry (the page keeps the draft).
//
// Drafts (a patrol checklist being filled in, with its photos) are kept in a second store, so that closing the page
// or losing the phone's battery does not lose them.
"use strict";

const Outbox = (() => {
  const DB = "gridhub-worker";
  const STORE = "outbox";
  const DRAFTS = "drafts";
  let dbPromise = null;

  function open() {
    if (!dbPromise) {
      dbPromise = new Promise((resolve, reject) => {
        const req = indexedDB.open(DB, 2);
        req.onupgradeneeded = () => {
          const db = req.result;
          if (!db.objectStoreNames.contains(STORE)) db.createObjectStore(STORE, { keyPath: "seq", autoIncrement: true });
          if (!db.objectStoreNames.contains(DRAFTS)) db.createObjectStore(DRAFTS, { keyPath: "id" });
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return dbPromise;
  }

  async function tx(mode, work, storeName = STORE) {
    const db = await open();
    return new Promise((resolve, reject) => {
      const t = db.transaction(storeName, mode);
      const store = t.objectStore(storeName);
      let out;
      Promise.resolve(work(store)).then((v) => { out = v; });
      t.oncomplete = () => resolve(out);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error);
    });
  }

  function req(r) {
    return new Promise((resolve, reject) => {
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
  }

  function newKey() {
    if (crypto.randomUUID) return `w-${crypto.randomUUID()}`;
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "w-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // An entry: { who, kind, key, client_time, ... } where kind is
  //   "action": task_id, action, body
  //   "photo":  task_id, photo (Blob), photo_name, note
  //   "patrol": task_id, photos: [{ref, item, blob, name, evidence (once uploaded)}], checklist: [{id, result,
  //             note}], note, title (for the list of what waits)
  //   "report": fields {category, building, unit, floor, place, description}, photos: [{blob, name}], title
  async function add(entry) {
    const item = Object.assign({ key: newKey(), client_time: new Date().toISOString() }, entry);
    item.seq = await tx("readwrite", (store) => req(store.add(item)));
    return item;
  }

  async function put(item) {
    if (item.seq === undefined) return;  // being sent at once, not stored
    await tx("readwrite", (store) => { store.put(item); });
  }

  // The person's entries, oldest first.
  async function list(who) {
    const items = await tx("readonly", (store) => req(store.getAll()));
    return (items || []).filter((i) => i.who === who).sort((a, b) => a.seq - b.seq);
  }

  async function remove(seq) {
    await tx("readwrite", (store) => { store.delete(seq); });
  }

  function headersOf(key, clientTime) {
    return { "Idempotency-Key": key, "X-Gridhub-Client-Time": clientTime };
  }

  function taskPath(item) { return `/api/v1/tasks/${encodeURIComponent(item.task_id)}`; }

  function photoForm(blob, name, note) {
    const form = new FormData();
    form.append("photo", blob, name || "photo.jpg");
    if (note) form.append("note", note);
    return form;
  }

  // The photos of a patrol entry, then its resolve. `progress(item)` after each photo (the entry is saved first).
  async function sendPatrol(item, progress) {
    const path = taskPath(item);
    for (let i = 0; i < item.photos.length; i++) {
      const p = item.photos[i];
      if (p.evidence) continue;
      const label = p.label ? `巡查：${p.label}` : null;
      const answer = await GH.request(`${path}/photos`, {
        method: "POST", body: photoForm(p.blob, p.name, label), headers: headersOf(`${item.key}.p${i}`, item.client_time) });
      p.evidence = answer.id;
      await put(item);
      if (progress) await progress(item);
    }
    const checklist = item.checklist.map((c) => {
      const out = { id: c.id, result: c.result };
      if (c.note) out.note = c.note;
      const photos = item.photos.filter((p) => p.item === c.id).map((p) => p.evidence);
      if (photos.length) out.photos = photos;
      return out;
    });
    const body = { checklist };
    if (item.note) body.note = item.note;
    return GH.request(`${path}/resolve`, {
      method: "POST", headers: Object.assign({ "Content-Type": "application/json" }, headersOf(item.key, item.client_time)),
      body: JSON.stringify(body) });
  }

  function sendReport(item) {
    const form = new FormData();
    for (const [k, v] of Object.entries(item.fields || {})) {
      if (v !== null && v !== undefined && v !== "") form.append(k, String(v));
    }
    for (const p of item.photos || []) form.append("photos", p.blob, p.name || "photo.jpg");
    return GH.request("/api/v1/reports", { method: "POST", body: form, headers: headersOf(item.key, item.client_time) });
  }

  // The request(s) of an entry; throws GH.ApiError (status 0 when the network failed).
  function send(item, progress) {
    if (item.kind === "patrol") return sendPatrol(item, progress);
    if (item.kind === "report") return sendReport(item);
    const headers = headersOf(item.key, item.client_time);
    const path = taskPath(item);
    if (item.kind === "photo") {
      return GH.request(`${path}/photos`, { method: "POST", body: photoForm(item.photo, item.photo_name, item.note), headers });
    }
    headers["Content-Type"] = "application/json";
    return GH.request(`${path}/${item.action}`, { method: "POST", headers, body: JSON.stringify(item.body || {}) });
  }

  let running = null;

  // Send the person's entries in order. A network failure stops (they wait for the signal); an answer 5xx stops
  // too (retried later); a refusal (4xx: the task moved on meanwhile, 409; a bad checklist, 422) is dropped with its
  // reason; 401 stops (log in again: the entries stay). `onSent(item, answer)`, `onDropped(item, error)`,
  // `onStopped(item, error)`, `onProgress(item)` (a patrol's photo arrived).
  function flush(who, hooks) {
    if (running) return running;
    running = (async () => {
      let sent = 0;
      try {
        for (const item of await list(who)) {
          let answer;
          try {
            answer = await send(item, hooks.onProgress);
          } catch (e) {
            if (e.status >= 400 && e.status < 500 && e.status !== 401 && e.status !== 408 && e.status !== 429) {
              await remove(item.seq);
              if (hooks.onDropped) await hooks.onDropped(item, e);
              continue;
            }
            if (hooks.onStopped) hooks.onStopped(item, e);
            break;
          }
          await remove(item.seq);
          sent += 1;
          if (hooks.onSent) await hooks.onSent(item, answer);
        }
      } finally {
        running = null;
      }
      return sent;
    })();
    return running;
  }

  // ------------------------------------------------------------------ drafts: {id: "<who>/<task id>", ...}

  async function saveDraft(who, taskId, draft) {
    await tx("readwrite", (store) => { store.put(Object.assign({}, draft, { id: `${who}/${taskId}` })); }, DRAFTS);
  }

  async function loadDraft(who, taskId) {
    return (await tx("readonly", (store) => req(store.get(`${who}/${taskId}`)), DRAFTS)) || null;
  }

  async function deleteDraft(who, taskId) {
    await tx("readwrite", (store) => { store.delete(`${who}/${taskId}`); }, DRAFTS);
  }

  return { add, put, list, remove, flush, send, newKey, saveDraft, loadDraft, deleteDraft };
})();

// The worker app (/worker): a grid worker's own tasks, or for a grid head, street officer or the bureau their
// area's tasks with those escalated to them first; one line per task, its actions open on a tap. Kept live by the
// change stream; installable (manifest, service worker at /sw.js); Web Push through the hub's VAPID key; actions,
// notes and photos taken without signal wait in the outbox (outbox.js) and are sent in order when back online.
"use strict";

(() => {
  const { el, label } = GH;
  const app = document.getElementById("app");
  const SHOWN_STATES = ["open", "accepted", "on_site", "resolved"];
  const SUPERVISORS = ["grid_head", "street_officer"];
  const LEVEL = { grid_head: 1, street_officer: 2, bureau: 3 };  // escalation_level that reaches the role
  const NEEDS_NOTE = ["return", "reject", "comment"];
  const MAIN_ACTIONS = ["accept", "arrive", "resolve", "close"];
  const EXTENSIONS = { 2: "延期 2 小时", 24: "延期 1 天", 72: "延期 3 天", 168: "延期 7 天" };
  const ME_KEY = "gridhub.me";
  const REFUSALS = { 403: "无权进行此操作", 404: "任务不存在", 409: "任务状态已变化", 413: "照片过大", 422: "内容有误" };
  const S = {
    me: null, view: "mine", tasks: new Map(), open: new Set(), seen: new Set(), drafts: new Map(),
    pending: new Map(), source: null, timer: null, people: new Map(), focus: null, problems: [],
  };

  GH.onLogOut = () => {
    if (S.source) S.source.close();
    S.source = null;
    clearInterval(S.timer);
    localStorage.removeItem(ME_KEY);
    if (navigator.serviceWorker && navigator.serviceWorker.controller) {
      navigator.serviceWorker.controller.postMessage({ type: "log-out" });
    }
    S.tasks.clear(); S.open.clear(); S.seen.clear(); S.pending.clear();
    start();
  };

  // ------------------------------------------------------------------ start: service worker, log-in, the person

  function registerWorker() {
    if (!("serviceWorker" in navigator)) return;
    navigator.serviceWorker.register("/sw.js", { scope: "/worker" }).catch((e) => console.warn("service worker", e));
    navigator.serviceWorker.addEventListener("message", (ev) => {
      const msg = ev.data || {};
      if (msg.type === "open-task" && msg.url) {
        const hash = new URL(msg.url, location.origin).hash;
        if (hash && hash !== location.hash) location.hash = hash; else openFromHash();
      }
    });
  }

  async function start() {
    if (!GH.token()) { GH.loginForm(app, "网格任务 · 登录", boot); return; }
    try {
      boot(await GH.get("/api/v1/me"));
    } catch (e) {
      const cached = JSON.parse(localStorage.getItem(ME_KEY) || "null");
      if (e.network && cached) boot(cached);  // no signal: who I was when last online
      else if (GH.token()) GH.loginForm(app, "网格任务 · 登录", boot);
    }
  }

  function isSupervisor() { return Boolean(S.me && LEVEL[S.me.role]); }

  function boot(me) {
    S.me = me;
    localStorage.setItem(ME_KEY, JSON.stringify(me));
    S.view = isSupervisor() ? "team" : "mine";
    const liveBadge = el("span", { class: "live", "data-testid": "live", text: "连接中" });
    const tabs = isSupervisor()
      ? el("nav", { class: "tabs", "data-testid": "tabs" },
          el("button", { class: "tab", "data-view": "team", "data-testid": "tab-team", text: "辖区督办",
                         onclick: () => switchView("team") }),
          el("button", { class: "tab", "data-view": "mine", "data-testid": "tab-mine", text: "我的任务",
                         onclick: () => switchView("mine") }))
      : null;
    app.replaceChildren(
      el("header", {},
        el("h1", { "data-testid": "title" }),
        liveBadge,
        el("button", { class: "small secondary", "data-testid": "push-toggle", hidden: true, onclick: togglePush }),
        el("button", { class: "small secondary", onclick: () => logOut(), text: "退出" })),
      el("div", { class: "bar" },
        el("span", { class: "outbox", "data-testid": "outbox", hidden: true }),
        el("span", { class: "muted", "data-testid": "net", text: navigator.onLine ? "" : "无网络，操作将在恢复后发送" })),
      el("ul", { class: "problems", "data-testid": "outbox-error" }),
      tabs,
      el("main", { id: "list", "data-testid": "task-list" }));
    S.source = GH.live({ task: onTask }, (on) => {
      liveBadge.className = on ? "live on" : "live";
      liveBadge.textContent = on ? "实时" : "重连中";
      if (on) flush();
    });
    clearInterval(S.timer);
    S.timer = setInterval(tick, 1000);
    showView();
    load().then(openFromHash).then(flush);
    refreshOutbox();
    pushButton();
  }

  function switchView(view) {
    if (S.view === view) return;
    S.view = view;
    S.tasks.clear();
    showView();
    load();
  }

  function showView() {
    const title = document.querySelector("[data-testid=title]");
    if (title) title.textContent = `${S.view === "team" ? "辖区督办" : "我的任务"} · ${S.me.name}`;
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("on", tab.dataset.view === S.view);
  }

  async function logOut() {
    const saved = JSON.parse(localStorage.getItem(pushKey()) || "null");
    if (saved) {  // this phone should not keep ringing for someone who has logged out
      try { await GH.request(`/api/v1/me/push-subscriptions/${encodeURIComponent(saved.id)}`, { method: "DELETE" }); } catch (e) { /* offline */ }
      localStorage.removeItem(pushKey());
      try {
        const reg = await navigator.serviceWorker.getRegistration("/worker");
        const sub = reg && await reg.pushManager.getSubscription();
        if (sub) await sub.unsubscribe();
      } catch (e) { /* no push here */ }
    }
    GH.logOut();
  }

  // ------------------------------------------------------------------ the tasks

  function relevant(t) {
    if (!SHOWN_STATES.includes(t.state)) return false;
    return S.view === "team" || t.assignee === S.me.id;
  }

  async function load() {
    const query = S.view === "team" ? "" : "assignee=me&";
    try {
      const page = await GH.get(`/api/v1/tasks?${query}state=${SHOWN_STATES.join(",")}&limit=1000`);
      S.tasks = new Map(page.items.map((t) => [t.id, t]));
      for (const t of page.items) {
        if (!S.seen.has(t.id) && t.severity === "critical" && t.state === "open") S.open.add(t.id);
        S.seen.add(t.id);
      }
    } catch (e) {
      if (!e.network && e.status !== 401) problem(`任务列表：${e.message}`);
    }
    await applyPending();
    render();
  }

  // A task of the stream: show it, update it or drop it; a new critical one for me rings.
  async function onTask(task) {
    if (!relevant(task)) {
      if (S.tasks.delete(task.id)) render();
      return;
    }
    const before = S.tasks.get(task.id);
    let full = task;
    try { full = await GH.get(`/api/v1/tasks/${encodeURIComponent(task.id)}`); } catch (e) { /* the stream's copy */ }
    if (!relevant(full)) { S.tasks.delete(task.id); render(); return; }
    S.tasks.set(full.id, full);
    const forMe = full.assignee === S.me.id || (isSupervisor() && full.escalation_level >= LEVEL[S.me.role]);
    const risen = before && full.escalation_level > before.escalation_level;
    if (full.severity === "critical" && full.state === "open" && forMe && (!before || risen)) {
      S.open.add(full.id);
      ring();
    }
    S.seen.add(full.id);
    render();
  }

  async function openFromHash() {
    const m = /task=([^&]+)/.exec(location.hash);
    if (!m) return;
    const id = decodeURIComponent(m[1]);
    try {
      const t = await GH.get(`/api/v1/tasks/${encodeURIComponent(id)}`);
      S.tasks.set(t.id, t);
    } catch (e) {
      if (!S.tasks.has(id)) { problem(`任务 ${id}：${e.message}`); return; }
    }
    S.open.add(id);
    S.focus = id;
    render();
    const card = document.querySelector(`[data-task-id="${CSS.escape(id)}"]`);
    if (card) card.scrollIntoView({ block: "start" });
  }
  window.addEventListener("hashchange", openFromHash);

  // What I may do to this task now (CONTRACT §4.1).
  function allowed(t) {
    const me = S.me;
    const assignee = t.assignee === me.id;
    const supervisor = SUPERVISORS.includes(me.role);
    const out = [];
    const live = ["open", "accepted", "on_site"].includes(t.state);
    if (t.state === "open" && (assignee || supervisor)) out.push("accept");
    if (t.state === "accepted" && assignee) out.push("arrive");
    if ((t.state === "accepted" || t.state === "on_site") && assignee) out.push("resolve");
    if (t.state === "resolved" && (supervisor || me.role === "bureau")) out.push("close");
    if (t.state === "resolved" && supervisor) out.push("reject");
    if ((t.state === "open" || t.state === "accepted") && assignee) out.push("return");
    if (live && (supervisor || me.role === "admin")) out.push("reassign");
    if (live && supervisor) out.push("extend");
    out.push("comment");
    return out;
  }

  function escalatedToMe(t) {
    return isSupervisor() && t.escalation_level >= LEVEL[S.me.role] && t.state !== "resolved";
  }

  // what still needs me first (a resolved task waits for its check), then critical first, then the nearest deadline
  function order(a, b) {
    return (a.state === "resolved") - (b.state === "resolved")
      || GH.SEVERITY_RANK[a.severity] - GH.SEVERITY_RANK[b.severity]
      || String(GH.dueOf(a) || "9").localeCompare(String(GH.dueOf(b) || "9"));
  }

  function render() {
    const list = document.getElementById("list");
    if (!list) return;
    // keep what the person is typing across live re-renders
    for (const card of list.querySelectorAll("[data-task-id]")) {
      const note = card.querySelector("textarea");
      if (note) S.drafts.set(card.dataset.taskId, note.value);
    }
    const tasks = [...S.tasks.values()].filter((t) => relevant(t) || t.id === S.focus).sort(order);
    if (!tasks.length) {
      list.replaceChildren(el("p", { class: "empty", "data-testid": "no-tasks", text: "暂无待办任务" }));
      return;
    }
    if (S.view !== "team") { list.replaceChildren(...tasks.map(card)); return; }
    const groups = [
      ["escalated", "升级至我", tasks.filter(escalatedToMe)],
      ["check", "待核查", tasks.filter((t) => t.state === "resolved")],
      ["area", "辖区待办", tasks.filter((t) => !escalatedToMe(t) && t.state !== "resolved")],
    ];
    list.replaceChildren(...groups.filter(([, , items]) => items.length).map(([id, title, items]) =>
      el("section", { class: "group", "data-testid": `group-${id}` },
        el("h3", { text: `${title}（${items.length}）` }), ...items.map(card))));
  }

  function placeOf(t) {
    const loc = t.location || {};
    return [loc.building, loc.floor !== null && loc.floor !== undefined ? `${loc.floor}层` : null, loc.place]
      .filter(Boolean).join(" · ") || t.device_id || loc.grid || "";
  }

  function card(t) {
    const due = GH.dueOf(t);
    const cd = GH.countdown(due);
    const isOpen = S.open.has(t.id);
    const pending = S.pending.get(t.id) || 0;
    const prefix = t.state === "open" ? "接单" : "办结";
    const line = el("button", {
      class: "line", type: "button", "data-testid": "task-line", "aria-expanded": isOpen ? "true" : "false",
      onclick: () => { if (S.open.has(t.id)) S.open.delete(t.id); else S.open.add(t.id); render(); },
    },
      el("span", { class: `dot ${t.severity}`, title: label("severity", t.severity) }),
      el("span", { class: "type", text: (t.drill ? "【演练】" : "") + label("type", t.type) }),
      el("span", { class: "place", "data-testid": "place", text: placeOf(t) }),
      due ? el("span", { class: `due${cd.late ? " late" : ""}`, "data-due": due, "data-prefix": prefix,
                         "data-testid": "countdown", text: prefix + cd.text })
          : el("span", { class: "due muted", text: label("state", t.state) }),
      pending ? el("span", { class: "pending", "data-testid": "pending", text: `待发送 ${pending}` }) : null);
    return el("article", {
      class: `card ${t.severity}${isOpen ? " open" : ""}${S.focus === t.id ? " focus" : ""}`,
      "data-testid": "task-card", "data-task-id": t.id, "data-state": t.state,
      "data-open": isOpen ? "true" : "false", "data-escalated": escalatedToMe(t) ? "true" : "false",
    }, line, isOpen ? details(t) : null);
  }

  function details(t) {
    const loc = t.location || {};
    const error = el("p", { class: "error", "data-testid": "task-error" });
    const note = el("textarea", { rows: 2, placeholder: "备注（回退、返工、备注时必填）", "data-testid": "note" });
    note.value = S.drafts.get(t.id) || "";
    const actions = allowed(t);
    const resolution = actions.includes("resolve")
      ? el("select", { "data-testid": "resolution" },
          ...Object.entries(GH.LABELS.resolution).map(([v, text]) => el("option", { value: v, text })))
      : null;
    const worker = actions.includes("reassign")
      ? el("select", { "data-testid": "reassign-to" }, el("option", { value: "", text: "改派给…" }))
      : null;
    if (worker) fillPeople(t, worker);
    const extension = actions.includes("extend")
      ? el("select", { "data-testid": "extend-by" },
          ...Object.entries(EXTENSIONS).map(([h, text]) => el("option", { value: h, text })))
      : null;
    const chosen = el("span", { class: "muted", text: "未选择照片" });
    const photo = t.assignee === S.me.id && t.state !== "closed"
      ? el("input", { type: "file", accept: "image/jpeg", capture: "environment", "data-testid": "photo",
                      class: "hidden-file",
                      onchange: (ev) => { chosen.textContent = ev.currentTarget.files.length ? ev.currentTarget.files[0].name : "未选择照片"; } })
      : null;

    async function act(action, button) {
      error.textContent = "";
      const body = {};
      if (note.value.trim()) body.note = note.value.trim();
      if (action === "resolve") body.resolution = resolution.value;
      if (NEEDS_NOTE.includes(action) && !body.note) { error.textContent = "请先填写备注"; note.focus(); return; }
      if (action === "reassign") {
        if (!worker.value) { error.textContent = "请选择改派给谁"; worker.focus(); return; }
        body.worker_id = worker.value;
      }
      if (action === "extend") {
        body.until = new Date(Date.now() + Number(extension.value) * 3600 * 1000).toISOString();
      }
      button.disabled = true;
      try {
        await write({ who: S.me.id, task_id: t.id, kind: "action", action, body });
        S.drafts.delete(t.id);
        note.value = "";
      } catch (e) {
        error.textContent = e.message;
      }
      button.disabled = false;
    }

    async function upload(button) {
      error.textContent = "";
      if (!photo.files.length) { error.textContent = "请先选择照片"; return; }
      const file = photo.files[0];
      button.disabled = true;
      try {
        await write({ who: S.me.id, task_id: t.id, kind: "photo", photo: file, photo_name: file.name,
                      note: note.value.trim() || null });
        S.drafts.delete(t.id);
        note.value = "";
      } catch (e) {
        error.textContent = e.message;
      }
      button.disabled = false;
    }

    const escalation = t.escalation_level > 0 ? ` · 已升级至${["", "网格长", "街道", "应急管理局"][t.escalation_level] || `L${t.escalation_level}`}` : "";
    return el("div", { class: "details" },
      el("div", { class: "muted", "data-testid": "meta" },
        `${label("severity", t.severity)} · ${label("state", t.state)} · ${loc.grid || t.grid_id || ""}`
        + ` · ${label("kind", loc.device_kind) || "设备"} ${t.device_id || "—"}${t.count > 1 ? ` · 报警${t.count}次` : ""}`
        + `${escalation}${t.assignee_name ? ` · 承办 ${t.assignee_name}` : ""}`),
      el("div", { class: "muted", "data-testid": "deadline" },
        t.state === "open" && t.accept_due ? `接单期限 ${GH.clock(t.accept_due, true)}`
          : t.resolve_due && t.state !== "resolved" ? `办结期限 ${GH.clock(t.resolve_due, true)}`
            : t.state === "resolved" ? "已办结，等待核查" : ""),
      note, resolution, worker, extension,
      photo ? el("div", { class: "actions" },
        el("label", { class: "filebtn" }, "拍照 / 选择照片", photo), chosen,
        el("button", { class: "secondary", "data-testid": "upload-photo", text: "上传照片",
                       onclick: (ev) => upload(ev.currentTarget) })) : null,
      el("div", { class: "actions" }, ...actions.map((a) => el("button", {
        class: MAIN_ACTIONS.includes(a) ? "" : "secondary",
        "data-testid": `action-${a}`, text: label("action", a), onclick: (ev) => act(a, ev.currentTarget) }))),
      error,
      el("details", {}, el("summary", { text: `处理记录（${t.history.length}）` }),
        el("ul", { class: "history", "data-testid": "history" }, ...t.history.map((h) => el("li", {
          class: h.pending ? "pending-step" : "",
          text: `${GH.clock(h.at)} ${label("action", h.action)} ${h.actor}${h.note ? "：" + h.note : ""}`
                + (h.pending ? "（待发送）" : h.received_at ? `（离线记录，${GH.clock(h.received_at)} 送达）` : "") })))));
  }

  async function fillPeople(t, select) {
    if (!t.grid_id) return;
    let people = S.people.get(t.grid_id);
    if (!people) {
      try {
        people = (await GH.get(`/api/v1/grids/${encodeURIComponent(t.grid_id)}/workers`)).items;
        S.people.set(t.grid_id, people);
      } catch (e) { return; }
    }
    for (const p of people) {
      if (p.id === t.assignee) continue;
      select.append(el("option", { value: p.id, text: `${p.name}（${label("role", p.role)}）` }));
    }
  }

  function tick() {
    for (const node of document.querySelectorAll("[data-due]")) {
      const cd = GH.countdown(node.dataset.due);
      node.textContent = (node.dataset.prefix || "") + cd.text;
      node.classList.toggle("late", cd.late);
    }
  }

  // ------------------------------------------------------------------ writes: now, or queued when offline

  // Send a write at once when online and nothing is waiting before it; otherwise (or when the network fails on the
  // way) it joins the outbox with its key and the time the person acted, and the task shows what is waiting.
  async function write(entry) {
    const waiting = (await Outbox.list(S.me.id)).length;
    if (navigator.onLine && !waiting) {
      const item = Object.assign({ key: Outbox.newKey() }, entry);
      const acted = new Date().toISOString();
      try {
        const answer = await Outbox.send(Object.assign({}, item, { client_time: acted }));
        await applied(item, answer);
        return;
      } catch (e) {
        if (!e.network) throw e;
        entry = Object.assign({}, item, { client_time: acted });
      }
    }
    await Outbox.add(entry);
    await refreshOutbox();
    await applyPending();
    render();
    if (navigator.onLine) flush();
  }

  async function applied(item, answer) {
    if (item.kind === "photo") {
      try { answer = await GH.get(`/api/v1/tasks/${encodeURIComponent(item.task_id)}`); } catch (e) { answer = null; }
    }
    if (answer && answer.id === item.task_id) {
      if (relevant(answer) || answer.id === S.focus) S.tasks.set(answer.id, answer); else S.tasks.delete(answer.id);
    }
    render();
  }

  const OPTIMISTIC = { accept: "accepted", arrive: "on_site", resolve: "resolved", close: "closed", reject: "accepted" };

  // What is waiting, shown on the tasks: their state moved on as the actions will move it, and the steps marked.
  async function applyPending() {
    if (!S.me) return;
    const items = await Outbox.list(S.me.id);
    S.pending = new Map();
    for (const item of items) {
      S.pending.set(item.task_id, (S.pending.get(item.task_id) || 0) + 1);
      const t = S.tasks.get(item.task_id);
      if (!t || (t.history || []).some((h) => h.pending_key === item.key)) continue;
      const copy = Object.assign({}, t, { history: [...(t.history || [])] });
      if (item.kind === "action" && OPTIMISTIC[item.action]) {
        copy.state = OPTIMISTIC[item.action];
        if (item.action === "accept") copy.assignee = S.me.id;
      }
      copy.history.push({ at: item.client_time, actor: S.me.id, action: item.kind === "photo" ? "photo" : item.action,
                          note: item.kind === "photo" ? item.note : (item.body || {}).note, pending: true,
                          pending_key: item.key });
      S.tasks.set(copy.id, copy);
    }
  }

  async function refreshOutbox() {
    const badge = document.querySelector("[data-testid=outbox]");
    if (!badge || !S.me) return;
    const n = (await Outbox.list(S.me.id)).length;
    badge.hidden = n === 0;
    badge.textContent = `待发送 (${n})`;
    badge.dataset.count = String(n);
  }

  function problem(text) {
    const list = document.querySelector("[data-testid=outbox-error]");
    if (!list) return;
    list.append(el("li", { text }, el("button", { class: "link", text: "知道了", onclick: (ev) => ev.currentTarget.parentNode.remove() })));
  }

  async function flush() {
    if (!S.me || !GH.token()) return;
    const who = S.me.id;
    let dropped = 0;
    const sent = await Outbox.flush(who, {
      onSent: async (item, answer) => { await refreshOutbox(); await applied(item, answer); },
      onDropped: async (item, e) => {
        dropped += 1;
        problem(`未能发送「${label("action", item.kind === "photo" ? "photo" : item.action)}」(${item.task_id})：`
                + `${REFUSALS[e.status] || "被拒绝"}（${e.message}）`);
        await refreshOutbox();
      },
      onStopped: (item, e) => { if (!e.network && e.status !== 401) problem(`暂未发送，稍后重试：${e.message}`); },
    });
    await refreshOutbox();
    if ((sent || dropped) && S.me && S.me.id === who) await load();  // the hub's state, now that all is in
  }

  window.addEventListener("online", () => {
    const net = document.querySelector("[data-testid=net]");
    if (net) net.textContent = "";
    flush();
  });
  window.addEventListener("offline", () => {
    const net = document.querySelector("[data-testid=net]");
    if (net) net.textContent = "无网络，操作将在恢复后发送";
  });
  setInterval(() => { if (navigator.onLine) flush(); }, 30000);

  // ------------------------------------------------------------------ a critical task while the page is open

  let audio = null;
  function unlockAudio() {  // browsers let a page make sound only after a tap
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    if (!audio) audio = new Ctx();
    if (audio.state === "suspended") audio.resume();
  }
  document.addEventListener("pointerdown", unlockAudio, { capture: true });
  document.addEventListener("keydown", unlockAudio, { capture: true });

  function ring() {
    document.body.dataset.alarms = String(Number(document.body.dataset.alarms || 0) + 1);
    if (navigator.vibrate) navigator.vibrate([400, 150, 400, 150, 800]);
    if (!audio) unlockAudio();
    if (!audio) return;
    const t0 = audio.currentTime + 0.05;
    for (let i = 0; i < 3; i++) {  // three short high beeps, like a fire panel
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = i % 2 ? 988 : 1319;
      gain.gain.setValueAtTime(0.0001, t0 + i * 0.3);
      gain.gain.exponentialRampToValueAtTime(0.25, t0 + i * 0.3 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t0 + i * 0.3 + 0.22);
      osc.connect(gain).connect(audio.destination);
      osc.start(t0 + i * 0.3);
      osc.stop(t0 + i * 0.3 + 0.25);
    }
  }

  // ------------------------------------------------------------------ Web Push

  function pushKey() { return `gridhub.push.${S.me ? S.me.id : ""}`; }

  function b64ToBytes(text) {
    const b64 = (text + "=".repeat((4 - (text.length % 4)) % 4)).replace(/-/g, "+").replace(/_/g, "/");
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  }

  async function pushButton() {
    const button = document.querySelector("[data-testid=push-toggle]");
    if (!button) return;
    if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
      button.hidden = true;
      return;
    }
    button.hidden = false;
    const on = Boolean(localStorage.getItem(pushKey())) && Notification.permission === "granted";
    button.textContent = on ? "已开启通知" : "订阅推送通知";
    button.dataset.on = on ? "true" : "false";
  }

  async function togglePush() {
    const button = document.querySelector("[data-testid=push-toggle]");
    if (button.dataset.on === "true") {
      if (!confirm("关闭本机的推送通知？")) return;
      const saved = JSON.parse(localStorage.getItem(pushKey()) || "null");
      try { if (saved) await GH.request(`/api/v1/me/push-subscriptions/${encodeURIComponent(saved.id)}`, { method: "DELETE" }); } catch (e) { /* gone */ }
      localStorage.removeItem(pushKey());
      pushButton();
      return;
    }
    try {
      if (await Notification.requestPermission() !== "granted") throw new Error("未允许通知：请在浏览器设置中允许");
      const reg = await navigator.serviceWorker.ready;
      const { public_key: key } = await GH.get("/api/v1/push/vapid-public-key");
      let sub = await reg.pushManager.getSubscription();
      if (sub && sub.options && sub.options.applicationServerKey) {
        const current = new Uint8Array(sub.options.applicationServerKey);
        if (current.join() !== b64ToBytes(key).join()) { await sub.unsubscribe(); sub = null; }  // a new hub key
      }
      sub = sub || await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64ToBytes(key) });
      const saved = await GH.request("/api/v1/me/push-subscriptions", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(sub.toJSON()) });
      localStorage.setItem(pushKey(), JSON.stringify({ id: saved.id, endpoint: sub.endpoint }));
    } catch (e) {
      problem(`无法开启通知：${e.status === 404 ? "服务器未配置推送" : e.message}`);
    }
    pushButton();
  }

  registerWorker();
  start();
})();

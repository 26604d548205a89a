// The worker app (/worker): a grid worker's own tasks, or for a grid head, street officer or the bureau their
// area's tasks with those escalated to them first; one line per task, its actions open on a tap. Kept live by the
// change stream; installable (manifest, service worker at /sw.js); Web Push through the hub's VAPID key; actions,
// notes and photos taken without signal wait in the outbox (outbox.js) and are sent in order when back online.
//
// Issue 14 adds two tabs. 巡查 (#patrols): the person's open patrols (today's: planned for today or earlier, or
// overdue; this week's, Monday to Sunday in the district's time zone; later ones folded), and one patrol at a time
// (#patrol=<task id>): 开始巡查 (accept), the checklist (合格 / 隐患 / 不涉及 per item, photos per item, a note per
// hazard item, an overall note) kept as a draft in IndexedDB, 提交 (photos, then the resolve with their evidence ids:
// one outbox entry, see outbox.js). 上报隐患 (#report): the hazard report form (POST /api/v1/reports), queued too
// when there is no signal.
"use strict";

(() => {
  const { el, label } = GH;
  const app = document.getElementById("app");
  const SHOWN_STATES = ["open", "accepted", "on_site", "resolved"];
  const LIVE_STATES = ["open", "accepted", "on_site"];
  const SUPERVISORS = ["grid_head", "street_officer"];
  const LEVEL = { grid_head: 1, street_officer: 2, bureau: 3 };  // escalation_level that reaches the role
  const NEEDS_NOTE = ["return", "reject", "comment"];
  const MAIN_ACTIONS = ["accept", "arrive", "resolve", "close"];
  const EXTENSIONS = { 2: "延期 2 小时", 24: "延期 1 天", 72: "延期 3 天", 168: "延期 7 天" };
  const ME_KEY = "gridhub.me";
  const REFUSALS = { 403: "无权进行此操作", 404: "任务不存在", 409: "任务状态已变化", 413: "照片过大", 422: "内容有误" };
  const VIEW_TITLES = { team: "辖区督办", mine: "我的任务", patrols: "安全巡查", report: "上报隐患" };
  // CONTRACT §7: the unit classes, the hazard categories (the report form's names, alerts/reports.py), patrols
  const UNIT_CLASS = { key: "重点单位", general: "一般单位", shop: "个体经营户", major_hazard: "重大危险源" };
  const CATEGORY = { escape_route: "安全出口/疏散通道", fire_equipment: "消防设施", electrical: "电气线路", gas: "燃气",
                     ebike: "电动自行车", other: "其他" };
  const FREQUENCY = { weekly: "每周", monthly: "每月", quarterly: "每季度", half_yearly: "每半年", yearly: "每年",
                      alert: "告警触发" };
  const RESULTS = [["ok", "合格"], ["hazard", "隐患"], ["n/a", "不涉及"]];
  const RESULT_TESTID = { ok: "result-ok", hazard: "result-hazard", "n/a": "result-na" };
  const MAX_PHOTO = 8 * 1024 * 1024;  // api/routes_evidence.py MAX_PHOTO
  const REPORT_MAX_PHOTOS = 5;        // api/limits.py
  const ITEM_MAX_PHOTOS = 3;          // per checklist item: the page's own bound
  const WEEKDAYS = ["周日", "周一", "周二", "周三", "周四", "周五", "周六"];
  // the task types, actions and resolution of issue 14, where common.js does not name them (yet)
  for (const [group, names] of Object.entries({
    type: { patrol: "安全巡查", hazard: "隐患整改", recheck: "隐患复查" },
    action: { confirm: "立案", dismiss: "不予立案", refer: "移交", report: "社区提报", patrol: "巡查提交" },
    resolution: { done: "已巡查" },
  })) {
    for (const [k, v] of Object.entries(names)) if (!GH.LABELS[group][k]) GH.LABELS[group][k] = v;
  }
  const S = {
    me: null, view: "mine", tasks: new Map(), open: new Set(), seen: new Set(), drafts: new Map(),
    pending: new Map(), source: null, timer: null, people: new Map(), focus: null, problems: [],
    patrols: new Map(), patrolPending: new Map(), patrolId: null, patrolTask: null, patrolDraft: null, patrolShown: null,
    thumbs: [], showOutbox: false, showLater: false, queue: [], report: null,
  };

  GH.onLogOut = () => {
    if (S.source) S.source.close();
    S.source = null;
    clearInterval(S.timer);
    localStorage.removeItem(ME_KEY);
    if (navigator.serviceWorker && navigator.serviceWorker.controller) {
      navigator.serviceWorker.controller.postMessage({ type: "log-out" });
    }
    S.tasks.clear(); S.open.clear(); S.seen.clear(); S.pending.clear(); S.patrols.clear(); S.patrolPending.clear();
    S.patrolId = null; S.patrolDraft = null; S.patrolShown = null; S.report = null;
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
        if (hash && hash !== location.hash) location.hash = hash; else route();
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
  function taskView() { return isSupervisor() ? "team" : "mine"; }

  function boot(me) {
    S.me = me;
    localStorage.setItem(ME_KEY, JSON.stringify(me));
    S.view = taskView();
    const liveBadge = el("span", { class: "live", "data-testid": "live", text: "连接中" });
    const tab = (view, text) => el("button", { class: "tab", "data-view": view, "data-testid": `tab-${view}`,
                                                onclick: () => goTo(view) }, el("span", { text }));
    const tabs = el("nav", { class: "tabs", "data-testid": "tabs" },
      isSupervisor() ? tab("team", "辖区督办") : null,
      tab("mine", "我的任务"), tab("patrols", "巡查"), tab("report", "上报隐患"));
    app.replaceChildren(
      el("header", {},
        el("h1", { "data-testid": "title" }),
        liveBadge,
        el("button", { class: "small secondary", "data-testid": "push-toggle", hidden: true, onclick: togglePush }),
        el("button", { class: "small secondary", onclick: () => logOut(), text: "退出" })),
      el("div", { class: "bar" },
        el("button", { class: "outbox", type: "button", "data-testid": "outbox", hidden: true,
                       onclick: () => { S.showOutbox = !S.showOutbox; refreshOutbox(); } }),
        el("span", { class: "muted", "data-testid": "net", text: navigator.onLine ? "" : "无网络，操作将在恢复后发送" })),
      el("ul", { class: "queue", "data-testid": "outbox-list", hidden: true }),
      el("ul", { class: "problems", "data-testid": "outbox-error" }),
      el("p", { class: "notice", "data-testid": "notice", hidden: true }),
      tabs,
      el("main", { id: "list", "data-testid": "task-list" }));
    S.source = GH.live({ task: onTask }, (on) => {
      liveBadge.className = on ? "live on" : "live";
      liveBadge.textContent = on ? "实时" : "重连中";
      if (on) flush();
    });
    clearInterval(S.timer);
    S.timer = setInterval(tick, 1000);
    const first = viewOfHash();
    if (first) S.view = first;
    showView();
    const loading = S.view === "patrols" || S.view === "report" ? Promise.resolve() : load();
    loading.then(route).then(flush);
    loadPatrols();
    refreshOutbox();
    pushButton();
  }

  // the view a hash asks for: #patrols, #patrol=<id>, #report (a #task= link opens in the task view)
  function viewOfHash() {
    const h = location.hash;
    if (/^#patrol=/.test(h) || h === "#patrols") return "patrols";
    if (h === "#report") return "report";
    if (/task=/.test(h)) return taskView();
    return null;
  }

  // A tab: the hash follows, so that the phone's back button goes back to where the person was.
  function goTo(view) {
    const hash = view === "patrols" || view === "report" ? `#${view}` : "";
    if (location.hash !== hash) history.pushState(null, "", location.pathname + hash);
    switchView(view);
  }

  function switchView(view) {
    const wasPatrol = S.patrolId;
    S.patrolId = null;
    if (S.view === view && !(view === "patrols" && wasPatrol)) return;
    S.view = view;
    showView();
    if (view === "team" || view === "mine") {
      S.tasks.clear();
      load();
    } else if (view === "patrols") {
      S.patrolShown = null;
      render();
      loadPatrols();
    } else if (view === "report") {
      renderReport();
    }
  }

  function showView() {
    const title = document.querySelector("[data-testid=title]");
    if (title) title.textContent = `${VIEW_TITLES[S.view]} · ${S.me.name}`;
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("on", tab.dataset.view === S.view);
    const list = document.getElementById("list");
    if (list) list.dataset.view = S.view;
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

  function notice(text) {
    const node = document.querySelector("[data-testid=notice]");
    if (!node) return;
    node.hidden = !text;
    node.textContent = text || "";
  }

  // ------------------------------------------------------------------ the tasks

  // patrols are on their own tab, not among the tasks
  function relevant(t) {
    if (!SHOWN_STATES.includes(t.state) || t.type === "patrol") return false;
    return S.view === "team" || t.assignee === S.me.id;
  }

  async function load() {
    const view = S.view;
    const query = view === "team" ? "" : "assignee=me&";
    try {
      const page = await GH.get(`/api/v1/tasks?${query}state=${SHOWN_STATES.join(",")}&limit=1000`);
      if (S.view !== view) return;
      S.tasks = new Map(page.items.filter((t) => t.type !== "patrol").map((t) => [t.id, t]));
      for (const t of S.tasks.values()) {
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
    if (task.type === "patrol") { await onPatrol(task); return; }
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

  // What the hash names: a task (#task=), a patrol (#patrol=), the patrol list or the report form.
  async function route() {
    const view = viewOfHash();
    const patrol = /^#patrol=([^&]+)/.exec(location.hash);
    if (patrol) { await openPatrol(decodeURIComponent(patrol[1])); return; }
    if (view === "patrols" || view === "report") { switchView(view); return; }
    if (view && S.view !== "team" && S.view !== "mine") switchView(view);
    await openFromHash();
  }

  async function openFromHash() {
    const m = /task=([^&]+)/.exec(location.hash);
    if (!m) return;
    const id = decodeURIComponent(m[1]);
    try {
      const t = await GH.get(`/api/v1/tasks/${encodeURIComponent(id)}`);
      if (t.type === "patrol") { location.hash = `patrol=${encodeURIComponent(id)}`; return; }
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
  window.addEventListener("hashchange", () => { if (S.me) route(); });
  window.addEventListener("popstate", () => {
    if (!S.me) return;
    const view = viewOfHash() || taskView();
    if (view !== S.view || S.patrolId) switchView(view);
  });

  // What I may do to this task now (CONTRACT §4.1).
  function allowed(t) {
    const me = S.me;
    const assignee = t.assignee === me.id;
    const supervisor = SUPERVISORS.includes(me.role);
    const out = [];
    const live = LIVE_STATES.includes(t.state);
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
    if (S.view === "patrols") { renderPatrols(); return; }
    if (S.view === "report") return;  // the form is drawn once, not redrawn under the person's fingers
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
      "data-testid": "task-card", "data-task-id": t.id, "data-state": t.state, "data-type": t.type,
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
          ...Object.entries(GH.LABELS.resolution).filter(([v]) => v !== "done")
            .map(([v, text]) => el("option", { value: v, text })))
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
      if (file.size > MAX_PHOTO) { error.textContent = `照片超过 8 MiB（${mib(file.size)}），请重拍或压缩`; return; }
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
    const what = t.device_id ? `${label("kind", loc.device_kind) || "设备"} ${t.device_id}`
      : t.unit_id ? `单位 ${t.unit_id}` : label("type", t.type);
    return el("div", { class: "details" },
      el("div", { class: "muted", "data-testid": "meta" },
        `${label("severity", t.severity)} · ${label("state", t.state)} · ${loc.grid || t.grid_id || ""}`
        + ` · ${what}${t.count > 1 ? ` · 报警${t.count}次` : ""}`
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

  function mib(bytes) { return `${(bytes / 1024 / 1024).toFixed(1)} MiB`; }

  // ------------------------------------------------------------------ days in the district's time zone

  const DAY = new Intl.DateTimeFormat("en-CA", { timeZone: GH.TIME_ZONE, year: "numeric", month: "2-digit",
                                                 day: "2-digit" });

  // "YYYY-MM-DD" of a time (default now) in the district's zone
  function dayOf(t) {
    const parts = Object.fromEntries(DAY.formatToParts(t ? new Date(t) : new Date()).map((p) => [p.type, p.value]));
    return `${parts.year}-${parts.month}-${parts.day}`;
  }

  function addDays(day, n) {
    const d = new Date(`${day}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  }

  function weekday(day) { return new Date(`${day}T00:00:00Z`).getUTCDay(); }

  // Monday and Sunday of the week of `day` (a Chinese calendar week)
  function weekOf(day) {
    const monday = addDays(day, -((weekday(day) + 6) % 7));
    return [monday, addDays(monday, 6)];
  }

  function dayText(day) {
    if (!day) return "";
    const [, m, d] = day.split("-");
    return `${Number(m)}月${Number(d)}日 ${WEEKDAYS[weekday(day)]}`;
  }

  // the last day of a period that ends at 00:00 (exclusive)
  function lastDay(end) { return end ? dayOf(new Date(new Date(end).getTime() - 1)) : null; }

  // ------------------------------------------------------------------ patrols: the list

  function patrolOf(t) { return t.patrol || {}; }

  function isOverdue(t) {
    const p = patrolOf(t);
    if (p.overdue) return true;
    return Boolean(p.period_end) && !p.done_at && Date.now() >= new Date(p.period_end).getTime();
  }

  async function loadPatrols() {
    if (!S.me) return;
    try {
      const page = await GH.get(`/api/v1/tasks?type=patrol&assignee=me&state=${LIVE_STATES.join(",")}&limit=1000`);
      const fresh = new Map(page.items.filter((t) => t.type === "patrol").map((t) => [t.id, t]));
      // a patrol whose submission waits in the outbox stays listed (as sent) until it is sent
      for (const [id, t] of S.patrols) if (S.patrolPending.get(id) === "submit" && !fresh.has(id)) fresh.set(id, t);
      S.patrols = fresh;
    } catch (e) {
      if (!e.network && e.status !== 401) problem(`巡查列表：${e.message}`);
    }
    await applyPending();
    patrolBadge();
    if (S.view === "patrols") render();
  }

  async function onPatrol(task) {
    const mine = task.assignee === S.me.id && LIVE_STATES.includes(task.state);
    if (!mine && !S.patrols.has(task.id) && S.patrolId !== task.id) return;
    let full = task;
    try { full = await GH.get(`/api/v1/tasks/${encodeURIComponent(task.id)}`); } catch (e) { /* the stream's copy */ }
    if (full.assignee === S.me.id && LIVE_STATES.includes(full.state)) S.patrols.set(full.id, full);
    else if (S.patrolPending.get(full.id) !== "submit") S.patrols.delete(full.id);
    if (S.patrolId === full.id) S.patrolTask = full;
    await applyPending();
    patrolBadge();
    if (S.view === "patrols") render();
  }

  function patrolGroups() {
    const today = dayOf();
    const [, sunday] = weekOf(today);
    const all = [...S.patrols.values()];
    const key = (t) => `${isOverdue(t) ? 0 : 1}${patrolOf(t).planned_for || "9"}${patrolOf(t).period_end || ""}`;
    all.sort((a, b) => key(a).localeCompare(key(b)));
    const planned = (t) => patrolOf(t).planned_for || today;
    return {
      today: all.filter((t) => isOverdue(t) || planned(t) <= today),
      week: all.filter((t) => !isOverdue(t) && planned(t) > today && planned(t) <= sunday),
      later: all.filter((t) => !isOverdue(t) && planned(t) > sunday),
    };
  }

  function patrolBadge() {
    const tab = document.querySelector("[data-testid=tab-patrols]");
    if (!tab) return;
    const n = patrolGroups().today.filter((t) => S.patrolPending.get(t.id) !== "submit").length;
    tab.dataset.count = String(n);
    tab.replaceChildren(...[el("span", { text: "巡查" }), n ? el("span", { class: "count", text: String(n) }) : null]
      .filter(Boolean));
  }

  function renderPatrols() {
    if (S.patrolId) { renderPatrol(); return; }
    const list = document.getElementById("list");
    if (!list) return;
    S.patrolShown = null;
    const groups = patrolGroups();
    const section = (id, title, items, folded) => el("section", { class: "group", "data-testid": `patrols-${id}` },
      el("h3", {}, `${title}（${items.length}）`,
        folded !== undefined ? el("button", { class: "link", "data-testid": `patrols-${id}-toggle`,
          text: folded ? "展开" : "收起", onclick: () => { S.showLater = !S.showLater; render(); } }) : null),
      ...(folded ? [] : items.length ? items.map(patrolCard)
        : [el("p", { class: "empty small", text: id === "today" ? "今日无待巡查单位" : "本周无其他巡查" })]));
    const [monday, sunday] = weekOf(dayOf());
    list.replaceChildren(...[
      el("p", { class: "muted range", "data-testid": "patrol-week",
                text: `今天 ${dayText(dayOf())} · 本周 ${dayText(monday)} 至 ${dayText(sunday)}` }),
      section("today", "今日巡查", groups.today),
      section("week", "本周巡查", groups.week),
      groups.later.length ? section("later", "以后", groups.later, !S.showLater) : null].filter(Boolean));
  }

  function patrolCard(t) {
    const p = patrolOf(t);
    const overdue = isOverdue(t);
    const pending = S.patrolPending.get(t.id);
    const status = pending === "submit" ? "已提交 · 待发送" : label("state", t.state);
    return el("article", {
      class: `card patrol${overdue ? " overdue" : ""}`, "data-testid": "patrol-card", "data-task-id": t.id,
      "data-state": t.state, "data-overdue": overdue ? "true" : "false", "data-unit": p.unit_id || t.unit_id || "",
    }, el("button", { class: "line two", type: "button", "data-testid": "patrol-line",
                      onclick: () => { location.hash = `patrol=${encodeURIComponent(t.id)}`; } },
      el("span", { class: "row" },
        el("span", { class: "unit", "data-testid": "unit-name", text: p.unit_name || p.unit_id || t.unit_id || t.id }),
        el("span", { class: `cls ${p.class || ""}`, "data-testid": "unit-class", text: UNIT_CLASS[p.class] || p.class || "" }),
        overdue ? el("span", { class: "tag late", "data-testid": "overdue", text: "逾期" }) : null,
        pending ? el("span", { class: "pending", "data-testid": "pending", text: "待发送" }) : null),
      el("span", { class: "row muted" },
        el("span", { "data-testid": "planned", text: `计划 ${dayText(p.planned_for)}` }),
        el("span", { "data-testid": "period-end", text: `截止 ${dayText(lastDay(p.period_end))}` }),
        el("span", { text: status }))));
  }

  // ------------------------------------------------------------------ patrols: one patrol, its checklist

  async function openPatrol(id) {
    if (S.view !== "patrols") { S.view = "patrols"; showView(); }
    S.patrolId = id;
    S.patrolShown = null;
    S.patrolTask = S.patrols.get(id) || null;
    S.patrolDraft = null;
    render();
    try {
      S.patrolDraft = await Outbox.loadDraft(S.me.id, id);
    } catch (e) { /* no IndexedDB: a draft in memory only */ }
    if (!S.patrolDraft) S.patrolDraft = { results: {}, photos: [], note: "" };
    try {
      const t = await GH.get(`/api/v1/tasks/${encodeURIComponent(id)}`);
      if (S.patrolId !== id) return;
      S.patrolTask = t;
      if (t.assignee === S.me.id && LIVE_STATES.includes(t.state)) S.patrols.set(t.id, t);
      reworkDraft(t);
    } catch (e) {
      if (!S.patrolTask && !e.network) problem(`巡查 ${id}：${e.message}`);
    }
    await applyPending();
    S.patrolShown = null;
    render();
  }

  // A patrol the grid head sent back (返工) starts from its recorded results: the photos already on the hub are
  // named by their evidence ids and not sent again.
  function reworkDraft(t) {
    const results = patrolOf(t).results;
    const draft = S.patrolDraft;
    if (!draft || !results || !LIVE_STATES.includes(t.state) || Object.values(draft.results).some((r) => r && r.result)) return;
    for (const r of results) {
      draft.results[r.id] = { result: r.result, note: r.note || "" };
      for (const ev of r.photos || []) draft.photos.push({ ref: Outbox.newKey(), item: r.id, blob: null, name: ev, evidence: ev });
    }
  }

  let draftTimer = null;
  function saveDraft(now) {
    const id = S.patrolId, draft = S.patrolDraft;
    if (!id || !draft) return;
    clearTimeout(draftTimer);
    const save = () => {
      if (S.patrolDraft !== draft || S.patrolId !== id) return;  // sent (and deleted) or left meanwhile
      Outbox.saveDraft(S.me.id, id, draft).catch((e) => console.warn("draft", e));
    };
    if (now) save(); else draftTimer = setTimeout(save, 400);
  }

  function closeThumbs() {
    for (const u of S.thumbs) URL.revokeObjectURL(u);
    S.thumbs = [];
  }

  function thumb(blob) {
    const url = URL.createObjectURL(blob);
    S.thumbs.push(url);
    return url;
  }

  // the patrol as the page shows it: the hub's copy with what waits in the outbox applied
  function shownPatrol() {
    return S.patrols.get(S.patrolId) || S.patrolTask;
  }

  function renderPatrol() {
    const list = document.getElementById("list");
    if (!list) return;
    const t = shownPatrol();
    const pending = S.patrolPending.get(S.patrolId) || "";
    const signature = t ? `${t.id}:${t.state}:${pending}:${Boolean(S.patrolDraft)}:${t.patrol && t.patrol.done_at}` : "none";
    if (S.patrolShown === signature && list.querySelector("[data-testid=patrol-view]")) return;  // nothing changed
    S.patrolShown = signature;
    closeThumbs();
    const back = el("button", { class: "link back", "data-testid": "patrol-back", text: "‹ 巡查列表",
                                onclick: () => { location.hash = "patrols"; } });
    if (!t) {
      list.replaceChildren(back, el("p", { class: "empty", text: "正在加载巡查…" }));
      return;
    }
    const p = patrolOf(t);
    const overdue = isOverdue(t);
    const error = el("p", { class: "error", "data-testid": "patrol-error" });
    const head = el("div", { class: "patrol-head" },
      el("h2", {},
        el("span", { "data-testid": "unit-name", text: p.unit_name || p.unit_id || t.unit_id || "" }),
        el("span", { class: `cls ${p.class || ""}`, text: UNIT_CLASS[p.class] || p.class || "" }),
        overdue ? el("span", { class: "tag late", "data-testid": "overdue", text: "逾期" }) : null),
      el("div", { class: "muted", "data-testid": "patrol-meta" },
        [placeOf(t), `${FREQUENCY[p.frequency] || p.frequency || ""}${p.kind === "alert" ? "（告警触发）" : ""}`,
         `计划 ${dayText(p.planned_for)}`, `截止 ${dayText(lastDay(p.period_end))}`, label("state", t.state)]
          .filter(Boolean).join(" · ")));
    const view = el("section", { class: "patrol-view", "data-testid": "patrol-view", "data-task-id": t.id,
                                 "data-state": t.state, "data-pending": pending }, back, head);
    if (pending === "submit" || t.state === "resolved" || t.state === "closed" || (p.done_at && !LIVE_STATES.includes(t.state))) {
      view.append(patrolSummary(t, pending));
    } else if (t.assignee !== S.me.id && !SUPERVISORS.includes(S.me.role)) {
      view.append(el("p", { class: "muted", text: `此巡查由 ${t.assignee_name || t.assignee || "他人"} 承办` }));
    } else if (t.state === "open") {
      view.append(el("p", { class: "muted", text: `共 ${(p.checklist || []).length} 项检查内容，开始后逐项检查。` }),
        el("div", { class: "actions" }, el("button", { "data-testid": "patrol-accept", text: "开始巡查",
          onclick: async (ev) => {
            error.textContent = "";
            ev.currentTarget.disabled = true;
            try { await write({ who: S.me.id, task_id: t.id, kind: "action", action: "accept", body: {} }); }
            catch (e) { error.textContent = `${REFUSALS[e.status] || "失败"}：${e.message}`; ev.currentTarget.disabled = false; }
          } })), error);
    } else {
      const rework = [...(t.history || [])].reverse().find((h) => h.action === "reject");
      if (rework) view.append(el("p", { class: "rework", "data-testid": "patrol-rework", text: `返工：${rework.note || ""}` }));
      view.append(checklist(t, error));
    }
    list.replaceChildren(view);
  }

  function patrolSummary(t, pending) {
    const p = patrolOf(t);
    const results = p.results || [];
    const hazards = results.filter((r) => r.result === "hazard");
    return el("div", { class: "summary", "data-testid": "patrol-summary" },
      el("p", { class: pending ? "pending-note" : "done-note",
                text: pending ? "巡查已提交，无网络时保存在本机，恢复网络后自动发送（待发送）"
                  : `巡查已完成${p.done_at ? `（${GH.clock(p.done_at, true)}）` : ""}：${results.length} 项，隐患 ${p.hazards ?? hazards.length} 项` }),
      results.length ? el("ol", { class: "results" }, ...results.map((r) => el("li", { class: `r-${r.result === "n/a" ? "na" : r.result}` },
        `${r.label || r.id}：${(RESULTS.find(([v]) => v === r.result) || [, r.result])[1]}${r.note ? `（${r.note}）` : ""}`
        + (r.photos && r.photos.length ? ` · 照片 ${r.photos.length}` : "")))) : null);
  }

  function checklist(t, error) {
    const p = patrolOf(t);
    const draft = S.patrolDraft || { results: {}, photos: [], note: "" };
    const items = p.checklist || [];
    const progress = el("p", { class: "progress", "data-testid": "patrol-progress" });
    function updateProgress() {
      const answered = items.filter((i) => (draft.results[i.id] || {}).result).length;
      const hazards = items.filter((i) => (draft.results[i.id] || {}).result === "hazard").length;
      progress.textContent = `已检查 ${answered}/${items.length}${hazards ? ` · 隐患 ${hazards}` : ""}`;
      progress.dataset.answered = String(answered);
    }

    function itemNode(item, index) {
      const r = draft.results[item.id] || (draft.results[item.id] = {});
      const li = el("li", { class: "check", "data-testid": "check-item", "data-item": item.id,
                            "data-result": r.result || "" });
      function fill() {
        const result = r.result || "";
        li.dataset.result = result;
        li.className = `check${result ? ` r-${result === "n/a" ? "na" : result}` : ""}`;
        const photos = draft.photos.filter((ph) => ph.item === item.id);
        const input = el("input", { type: "file", accept: "image/jpeg", capture: "environment", class: "hidden-file",
                                    "data-testid": "item-photo", onchange: (ev) => addPhoto(ev.currentTarget) });
        const note = result === "hazard"
          ? el("textarea", { rows: 2, "data-testid": "item-note", placeholder: "隐患说明（说明或照片至少一项）",
                             oninput: (ev) => { r.note = ev.currentTarget.value; saveDraft(); } })
          : null;
        if (note) note.value = r.note || "";
        li.replaceChildren(...[
          el("div", { class: "check-label" }, el("span", { class: "n", text: `${index + 1}` }),
             el("span", { "data-testid": "item-label", text: item.label })),
          el("div", { class: "seg", role: "group" }, ...RESULTS.map(([value, text]) => el("button", {
            type: "button", class: `seg-${value === "n/a" ? "na" : value}${result === value ? " on" : ""}`,
            "aria-pressed": result === value ? "true" : "false", "data-testid": RESULT_TESTID[value], text,
            onclick: () => { r.result = value; fill(); updateProgress(); saveDraft(true); error.textContent = ""; } })),
            photos.length < ITEM_MAX_PHOTOS
              ? el("label", { class: "filebtn cam", title: "拍照" }, photos.length ? `拍照 ${photos.length}` : "拍照", input)
              : el("span", { class: "cam full", text: `照片 ${photos.length}` })),
          photos.length ? el("div", { class: "photos" },
            ...photos.map((ph) => el("span", { class: "thumb", "data-testid": "item-thumb" },
              ph.blob ? el("img", { src: thumb(ph.blob), alt: ph.name || "照片" })
                : el("span", { class: "sent", title: ph.evidence, text: "已上传" }),
              el("button", { type: "button", class: "x", "data-testid": "photo-remove", title: "删除照片", text: "×",
                             onclick: () => { draft.photos.splice(draft.photos.indexOf(ph), 1); fill(); saveDraft(true); } }))))
            : null,
          note].filter(Boolean));
      }
      function addPhoto(input) {
        const file = input.files[0];
        if (!file) return;
        error.textContent = "";
        if (file.type && file.type !== "image/jpeg") { error.textContent = `「${item.label}」：仅支持 JPEG 照片`; return; }
        if (file.size > MAX_PHOTO) { error.textContent = `「${item.label}」：照片超过 8 MiB（${mib(file.size)}）`; return; }
        draft.photos.push({ ref: Outbox.newKey(), item: item.id, blob: file, name: file.name || "photo.jpg" });
        fill();
        saveDraft(true);
      }
      fill();
      return li;
    }

    const overall = el("textarea", { rows: 2, "data-testid": "patrol-note", placeholder: "巡查备注（选填）",
                                     oninput: (ev) => { draft.note = ev.currentTarget.value; saveDraft(); } });
    overall.value = draft.note || "";
    const submit = el("button", { class: "wide", "data-testid": "patrol-submit", text: "提交巡查",
                                  onclick: (ev) => submitPatrol(t, ev.currentTarget, error) });
    const node = el("div", { class: "checklist" },
      el("ol", { class: "checks", "data-testid": "checklist" }, ...items.map(itemNode)),
      el("label", { class: "field" }, "巡查备注", overall),
      progress, error, el("div", { class: "actions" }, submit));
    updateProgress();
    return node;
  }

  // The page's checks, as the hub's (alerts/tasks.py): every item answered, a hazard with a note or a photo.
  function checkPatrol(t, draft) {
    const items = patrolOf(t).checklist || [];
    const missing = items.filter((i) => !(draft.results[i.id] || {}).result);
    if (missing.length) {
      return `还有 ${missing.length} 项未检查：${missing.map((i) => `「${i.label}」`).join("、")}`;
    }
    const bare = items.filter((i) => draft.results[i.id].result === "hazard" && !(draft.results[i.id].note || "").trim()
                                     && !draft.photos.some((ph) => ph.item === i.id));
    if (bare.length) return `隐患项需填写说明或拍照：${bare.map((i) => `「${i.label}」`).join("、")}`;
    return null;
  }

  async function submitPatrol(t, button, error) {
    error.textContent = "";
    const draft = S.patrolDraft;
    const problemText = checkPatrol(t, draft);
    if (problemText) { error.textContent = problemText; return; }
    saveDraft(true);  // kept as it is sent, until the hub has it
    const items = patrolOf(t).checklist || [];
    const answers = items.map((i) => {
      const r = draft.results[i.id];
      return { id: i.id, result: r.result, note: r.result === "hazard" ? (r.note || "").trim() || null : null };
    });
    const labels = Object.fromEntries(items.map((i) => [i.id, i.label]));
    const entry = {
      who: S.me.id, task_id: t.id, kind: "patrol", title: patrolOf(t).unit_name || t.id,
      checklist: answers, note: (draft.note || "").trim() || null,
      photos: draft.photos.map((ph) => ({ ref: ph.ref, item: ph.item, blob: ph.blob, name: ph.name,
                                          evidence: ph.evidence || null, label: labels[ph.item] })),
    };
    button.disabled = true;
    button.textContent = entry.photos.some((ph) => !ph.evidence) ? "正在上传照片…" : "正在提交…";
    try {
      await write(entry);
    } catch (e) {
      keepEvidence(entry);
      error.textContent = `提交失败：${REFUSALS[e.status] || "被拒绝"}（${e.message}）`;
      button.disabled = false;
      button.textContent = "提交巡查";
    }
  }

  // the photos of a refused submission that did reach the hub are not sent again with the next one
  function keepEvidence(entry) {
    const draft = S.patrolId === entry.task_id ? S.patrolDraft : null;
    if (!draft) return;
    for (const ph of entry.photos || []) {
      const mine = draft.photos.find((d) => d.ref === ph.ref);
      if (mine && ph.evidence) mine.evidence = ph.evidence;
    }
    saveDraft(true);
  }

  async function patrolDone(item, answer) {
    if (S.patrolId === item.task_id) clearTimeout(draftTimer);
    try { await Outbox.deleteDraft(S.me.id, item.task_id); } catch (e) { /* gone */ }
    S.patrolPending.delete(item.task_id);
    S.patrols.delete(item.task_id);
    if (answer && answer.id === item.task_id) {
      if (LIVE_STATES.includes(answer.state)) S.patrols.set(answer.id, answer);
      if (S.patrolId === item.task_id) S.patrolTask = answer;
    }
    if (S.patrolId === item.task_id) { S.patrolDraft = { results: {}, photos: [], note: "" }; S.patrolShown = null; }
    const p = answer ? patrolOf(answer) : {};
    notice(`巡查已提交：${item.title || item.task_id}，${item.checklist.length} 项，`
           + `隐患 ${p.hazards ?? item.checklist.filter((c) => c.result === "hazard").length} 项`);
    patrolBadge();
  }

  // ------------------------------------------------------------------ the hazard report form (上报隐患)

  function cached(key) { try { return JSON.parse(localStorage.getItem(key) || "null"); } catch (e) { return null; } }

  // the buildings and units of the person's scope, kept for filling in the form without signal
  async function places() {
    const bKey = `gridhub.buildings.${S.me.id}`, uKey = `gridhub.units.${S.me.id}`;
    let buildings = cached(bKey), units = cached(uKey);
    try {
      buildings = (await GH.get("/api/v1/map/buildings")).items
        .map((b) => ({ id: b.id, name: b.name, grid_id: b.grid_id, grid_name: b.grid_name }));
      localStorage.setItem(bKey, JSON.stringify(buildings));
    } catch (e) { if (!buildings) buildings = []; }
    try {
      units = (await GH.get("/api/v1/units?limit=1000")).items
        .map((u) => ({ id: u.id, name: u.name, class: u.class, grid_id: u.grid_id, building_id: u.building_id }));
      localStorage.setItem(uKey, JSON.stringify(units));
    } catch (e) { if (!units) units = []; }
    return { buildings, units };
  }

  function renderReport() {
    const list = document.getElementById("list");
    if (!list) return;
    closeThumbs();
    const state = S.report || (S.report = { photos: [] });
    const error = el("p", { class: "error", "data-testid": "report-error" });
    const category = el("select", { name: "category", "data-testid": "report-category" },
      el("option", { value: "", text: "请选择隐患类别" }),
      ...Object.entries(CATEGORY).map(([v, text]) => el("option", { value: v, text })));
    const building = el("select", { name: "building", "data-testid": "report-building" },
      el("option", { value: "", text: "正在加载楼栋…" }));
    const unit = el("select", { name: "unit", "data-testid": "report-unit" },
      el("option", { value: "", text: "不涉及具体单位" }));
    const floor = el("input", { name: "floor", type: "number", inputmode: "numeric", min: -10, max: 300,
                                placeholder: "楼层，如 3（地下一层填 -1）", "data-testid": "report-floor" });
    const place = el("input", { name: "place", maxlength: 200, placeholder: "具体位置，如 一楼楼梯口",
                                "data-testid": "report-place" });
    const description = el("textarea", { name: "description", rows: 3, maxlength: 2000, "data-testid": "report-description",
                                         placeholder: "隐患情况描述（必填）" });
    const photoList = el("div", { class: "photos", "data-testid": "report-photos" });
    const input = el("input", { type: "file", accept: "image/jpeg", capture: "environment", multiple: true,
                                class: "hidden-file", "data-testid": "report-photo",
                                onchange: (ev) => { addPhotos(ev.currentTarget.files); ev.currentTarget.value = ""; } });
    const count = el("span", { class: "muted", "data-testid": "report-photo-count" });
    const submit = el("button", { class: "wide", type: "submit", "data-testid": "report-submit", text: "提交上报" });
    let data = { buildings: [], units: [] };

    function drawPhotos() {
      closeThumbs();
      photoList.replaceChildren(...state.photos.map((ph, i) => el("span", { class: "thumb" },
        el("img", { src: thumb(ph.blob), alt: ph.name }),
        el("button", { type: "button", class: "x", title: "删除照片", text: "×",
                       onclick: () => { state.photos.splice(i, 1); drawPhotos(); } }))));
      count.textContent = `照片 ${state.photos.length}/${REPORT_MAX_PHOTOS}（每张不超过 8 MiB）`;
    }
    function addPhotos(files) {
      error.textContent = "";
      for (const file of files) {
        if (state.photos.length >= REPORT_MAX_PHOTOS) { error.textContent = `最多 ${REPORT_MAX_PHOTOS} 张照片`; break; }
        if (file.type && file.type !== "image/jpeg") { error.textContent = `「${file.name}」不是 JPEG 照片`; continue; }
        if (file.size > MAX_PHOTO) { error.textContent = `照片「${file.name}」超过 8 MiB（${mib(file.size)}）`; continue; }
        state.photos.push({ blob: file, name: file.name || "photo.jpg" });
      }
      drawPhotos();
    }
    function fillUnits() {
      const b = data.buildings.find((x) => x.id === building.value);
      const chosen = unit.value;
      const options = b ? data.units.filter((u) => u.building_id === b.id || (!u.building_id && u.grid_id === b.grid_id)) : [];
      unit.replaceChildren(el("option", { value: "", text: options.length ? "不涉及具体单位" : "（该楼栋无登记单位）" }),
        ...options.map((u) => el("option", { value: u.id, text: `${u.name}（${UNIT_CLASS[u.class] || u.class}）` })));
      if (options.some((u) => u.id === chosen)) unit.value = chosen;
    }
    building.addEventListener("change", fillUnits);

    const form = el("form", { class: "report", "data-testid": "report-form", novalidate: true },
      el("label", { class: "field" }, "隐患类别", category),
      el("label", { class: "field" }, "所在楼栋", building),
      el("label", { class: "field" }, "单位（选填）", unit),
      el("div", { class: "two" }, el("label", { class: "field" }, "楼层（选填）", floor),
                                  el("label", { class: "field" }, "位置（选填）", place)),
      el("label", { class: "field" }, "情况描述", description),
      el("div", { class: "actions" }, el("label", { class: "filebtn" }, "拍照 / 选择照片", input), count),
      photoList, error, el("div", { class: "actions" }, submit),
      el("section", { class: "mine", "data-testid": "my-reports" }));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      if (!category.value) { error.textContent = "请选择隐患类别"; category.focus(); return; }
      if (!building.value && !unit.value) { error.textContent = "请选择隐患所在楼栋"; building.focus(); return; }
      if (!description.value.trim()) { error.textContent = "请填写隐患情况描述"; description.focus(); return; }
      if (floor.value !== "" && !/^-?\d+$/.test(floor.value)) { error.textContent = "楼层须为整数"; floor.focus(); return; }
      if (state.photos.length > REPORT_MAX_PHOTOS) { error.textContent = `最多 ${REPORT_MAX_PHOTOS} 张照片`; return; }
      const big = state.photos.find((ph) => ph.blob.size > MAX_PHOTO);
      if (big) { error.textContent = `照片「${big.name}」超过 8 MiB`; return; }
      const b = data.buildings.find((x) => x.id === building.value);
      const fields = { category: category.value, building: building.value || null, unit: unit.value || null,
                       floor: floor.value === "" ? null : Number(floor.value), place: place.value.trim() || null,
                       description: description.value.trim() };
      submit.disabled = true;
      submit.textContent = "正在提交…";
      try {
        await write({ who: S.me.id, kind: "report", fields, photos: state.photos.slice(),
                      title: `${CATEGORY[fields.category]} · ${b ? b.name : fields.unit}` });
        S.report = null;
        renderReport();
      } catch (e) {
        error.textContent = `上报失败：${REFUSALS[e.status] || "被拒绝"}（${e.message}）`;
        submit.disabled = false;
        submit.textContent = "提交上报";
      }
    });
    list.replaceChildren(form);
    drawPhotos();
    places().then((got) => {
      data = got;
      const chosen = building.value;
      building.replaceChildren(el("option", { value: "", text: got.buildings.length ? "请选择楼栋" : "（无可选楼栋）" }),
        ...got.buildings.map((b) => el("option", { value: b.id, text: `${b.name}（${b.grid_name || b.grid_id}）` })));
      if (chosen) building.value = chosen;
      else if (got.buildings.length === 1) building.value = got.buildings[0].id;
      fillUnits();
      form.dataset.ready = "true";
    });
    myReports(form.querySelector("[data-testid=my-reports]"));
  }

  async function myReports(node) {
    try {
      const page = await GH.get("/api/v1/reports?mine=true&limit=5");
      if (!page.items.length) return;
      node.replaceChildren(el("h3", { text: "我最近的上报" }), el("ul", { class: "history" }, ...page.items.map((t) =>
        el("li", { "data-testid": "my-report", "data-task-id": t.id,
                   text: `${GH.clock(t.opened_at || (t.history[0] || {}).at, true)} ${CATEGORY[(t.report || {}).category] || ""}`
                         + ` · ${placeOf(t)} · ${label("state", t.state)}${(t.report || {}).confirmed ? " · 已立案" : ""}` }))));
    } catch (e) { /* offline: nothing to show */ }
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
        item.client_time = acted;
        const answer = await Outbox.send(item);
        await applied(item, answer);
        return;
      } catch (e) {
        if (!e.network) throw e;
        entry = item;  // with the evidence ids of the photos that did arrive
      }
    }
    await Outbox.add(entry);
    await refreshOutbox();
    await applyPending();
    if (entry.kind === "report") notice("无网络：隐患上报已保存在本机，恢复网络后自动发送（待发送）");
    if (entry.kind === "patrol") notice("无网络：巡查已保存在本机，恢复网络后自动发送（待发送）");
    S.patrolShown = null;
    render();
    patrolBadge();
    if (navigator.onLine) flush();
  }

  async function applied(item, answer) {
    if (item.kind === "report") {
      notice(`隐患已上报（${answer && answer.id ? answer.id : ""}），等待网格长立案`);
      return;
    }
    if (item.kind === "patrol") {
      await patrolDone(item, answer);
      S.patrolShown = null;
      render();
      return;
    }
    if (item.kind === "photo") {
      try { answer = await GH.get(`/api/v1/tasks/${encodeURIComponent(item.task_id)}`); } catch (e) { answer = null; }
    }
    if (answer && answer.id === item.task_id) {
      if (answer.type === "patrol") {
        if (LIVE_STATES.includes(answer.state) && answer.assignee === S.me.id) S.patrols.set(answer.id, answer);
        if (S.patrolId === answer.id) S.patrolTask = answer;
        S.patrolShown = null;
      } else if (relevant(answer) || answer.id === S.focus) S.tasks.set(answer.id, answer); else S.tasks.delete(answer.id);
    }
    render();
  }

  const OPTIMISTIC = { accept: "accepted", arrive: "on_site", resolve: "resolved", close: "closed", reject: "accepted" };

  // What is waiting, shown on the tasks and patrols: their state moved on as the actions will move it, the steps
  // marked; a patrol whose submission waits is shown as sent.
  async function applyPending() {
    if (!S.me) return;
    const items = await Outbox.list(S.me.id);
    S.queue = items;
    S.pending = new Map();
    S.patrolPending = new Map();
    for (const item of items) {
      if (!item.task_id) continue;
      S.pending.set(item.task_id, (S.pending.get(item.task_id) || 0) + 1);
      const map = S.patrols.has(item.task_id) ? S.patrols : S.tasks;
      if (map === S.patrols || item.kind === "patrol") {
        S.patrolPending.set(item.task_id, item.kind === "patrol" ? "submit" : S.patrolPending.get(item.task_id) || "action");
      }
      const t = map.get(item.task_id);
      if (!t || (t.history || []).some((h) => h.pending_key === item.key)) continue;
      const copy = Object.assign({}, t, { history: [...(t.history || [])] });
      if (item.kind === "action" && OPTIMISTIC[item.action]) {
        copy.state = OPTIMISTIC[item.action];
        if (item.action === "accept") copy.assignee = S.me.id;
      }
      if (item.kind === "patrol") copy.state = "resolved";
      copy.history.push({ at: item.client_time, actor: S.me.id,
                          action: item.kind === "photo" ? "photo" : item.kind === "patrol" ? "patrol" : item.action,
                          note: item.kind === "photo" ? item.note : (item.body || {}).note, pending: true,
                          pending_key: item.key });
      map.set(copy.id, copy);
      if (S.patrolId === copy.id) S.patrolTask = copy;
    }
  }

  function describe(item) {
    const task = item.task_id ? (S.tasks.get(item.task_id) || S.patrols.get(item.task_id)) : null;
    const name = task && task.patrol ? task.patrol.unit_name : task ? `${label("type", task.type)} ${placeOf(task)}` : item.task_id;
    if (item.kind === "patrol") {
      const sent = item.photos.filter((p) => p.evidence).length;
      return `巡查提交 · ${item.title || name}（${item.checklist.length} 项`
             + `${item.photos.length ? `，照片 ${sent}/${item.photos.length}` : ""}）`;
    }
    if (item.kind === "report") return `隐患上报 · ${item.title || ""}${item.photos.length ? `（照片 ${item.photos.length}）` : ""}`;
    if (item.kind === "photo") return `照片 · ${name}`;
    return `${label("action", item.action)} · ${name}`;
  }

  async function refreshOutbox() {
    const badge = document.querySelector("[data-testid=outbox]");
    if (!badge || !S.me) return;
    const items = await Outbox.list(S.me.id);
    S.queue = items;
    const n = items.length;
    badge.hidden = n === 0;
    badge.textContent = `待发送 (${n})`;
    badge.dataset.count = String(n);
    const list = document.querySelector("[data-testid=outbox-list]");
    if (list) {
      list.hidden = !S.showOutbox || n === 0;
      list.replaceChildren(...items.map((item) => el("li", { "data-testid": "outbox-item", "data-kind": item.kind },
        el("span", { class: "when", text: GH.clock(item.client_time, true) }), el("span", { text: describe(item) }))));
    }
  }

  function problem(text) {
    const list = document.querySelector("[data-testid=outbox-error]");
    if (!list) return;
    list.append(el("li", { text }, el("button", { class: "link", text: "知道了", onclick: (ev) => ev.currentTarget.parentNode.remove() })));
  }

  function what(item) {
    if (item.kind === "patrol") return `巡查提交「${item.title || item.task_id}」`;
    if (item.kind === "report") return `隐患上报「${item.title || ""}」`;
    return `「${label("action", item.kind === "photo" ? "photo" : item.action)}」(${item.task_id})`;
  }

  async function flush() {
    if (!S.me || !GH.token()) return;
    const who = S.me.id;
    let dropped = 0;
    const sent = await Outbox.flush(who, {
      onSent: async (item, answer) => {
        await refreshOutbox();
        await applied(item, answer);
        await applyPending();  // what still waits, on the hub's answer
        render();
      },
      onProgress: async () => { await refreshOutbox(); },
      onDropped: async (item, e) => {
        dropped += 1;
        if (item.kind === "patrol") keepEvidence(item);
        problem(`未能发送${what(item)}：${REFUSALS[e.status] || "被拒绝"}（${e.message}）`
                + (item.kind === "patrol" ? "；填写内容仍保存在本机，请修改后重新提交" : ""));
        await refreshOutbox();
      },
      onStopped: (item, e) => { if (!e.network && e.status !== 401) problem(`暂未发送，稍后重试：${e.message}`); },
    });
    await refreshOutbox();
    if ((sent || dropped) && S.me && S.me.id === who) {  // the hub's state, now that all is in
      if (S.view === "team" || S.view === "mine") await load();
      await loadPatrols();
      render();
    }
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

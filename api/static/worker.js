// The grid worker's page: my open tasks, critical first, with the place, the deadline counting down, and the
// actions of CONTRACT §4.1 I may take now (with a note and a photo); kept live by the change stream.
"use strict";

(() => {
  const { el, label } = GH;
  const app = document.getElementById("app");
  const S = { me: null, tasks: new Map(), source: null, drafts: new Map() };
  const SHOWN_STATES = ["open", "accepted", "on_site", "resolved"];
  const SUPERVISORS = ["grid_head", "street_officer"];

  GH.onLogOut = () => { if (S.source) S.source.close(); S.source = null; start(); };

  function start() {
    if (!GH.token()) { GH.loginForm(app, "网格员任务", boot); return; }
    GH.get("/api/v1/me").then(boot).catch(() => GH.loginForm(app, "网格员任务", boot));
  }

  function boot(me) {
    S.me = me;
    const liveBadge = el("span", { class: "live", "data-testid": "live", text: "连接中" });
    app.replaceChildren(
      el("header", {}, el("h1", { text: `我的任务 · ${me.name}` }), liveBadge,
        el("button", { class: "secondary", onclick: () => GH.logOut(), text: "退出" })),
      el("main", { id: "list", "data-testid": "task-list" }));
    S.source = GH.live({ task: onTask }, (on) => {
      liveBadge.className = on ? "live on" : "live";
      liveBadge.textContent = on ? "实时" : "重连中";
    });
    load();
    setInterval(tick, 1000);
  }

  async function load() {
    const page = await GH.get(`/api/v1/tasks?assignee=me&state=${SHOWN_STATES.join(",")}&limit=1000`);
    S.tasks = new Map(page.items.map((t) => [t.id, t]));
    render();
  }

  async function onTask(task) {
    const mine = task.assignee === S.me.id && SHOWN_STATES.includes(task.state);
    if (!mine) {
      if (S.tasks.delete(task.id)) render();
      return;
    }
    try {
      S.tasks.set(task.id, await GH.get(`/api/v1/tasks/${encodeURIComponent(task.id)}`));
    } catch (e) {
      S.tasks.delete(task.id);
    }
    render();
  }

  // What I may do to this task now (CONTRACT §4.1).
  function allowed(t) {
    const me = S.me;
    const assignee = t.assignee === me.id;
    const supervisor = SUPERVISORS.includes(me.role);
    const out = [];
    if (t.state === "open" && (assignee || supervisor)) out.push("accept");
    if (t.state === "accepted" && assignee) out.push("arrive");
    if ((t.state === "accepted" || t.state === "on_site") && assignee) out.push("resolve");
    if (t.state === "resolved" && (supervisor || me.role === "bureau")) out.push("close");
    if (t.state === "resolved" && supervisor) out.push("reject");
    if ((t.state === "open" || t.state === "accepted") && assignee) out.push("return");
    out.push("comment");
    return out;
  }

  const NEEDS_NOTE = ["return", "reject", "comment"];

  // what still needs me first (a resolved task waits for its check), then critical first, then the nearest deadline
  function order(a, b) {
    return (a.state === "resolved") - (b.state === "resolved")
      || GH.SEVERITY_RANK[a.severity] - GH.SEVERITY_RANK[b.severity]
      || String(GH.dueOf(a) || "9").localeCompare(String(GH.dueOf(b) || "9"));
  }

  function render() {
    const list = document.getElementById("list");
    if (!list) return;
    // keep what the worker is typing across live re-renders
    for (const card of list.querySelectorAll("[data-task-id]")) {
      const note = card.querySelector("textarea");
      if (note) S.drafts.set(card.dataset.taskId, note.value);
    }
    const tasks = [...S.tasks.values()].sort(order);
    if (!tasks.length) {
      list.replaceChildren(el("p", { class: "empty", "data-testid": "no-tasks", text: "暂无待办任务" }));
      return;
    }
    list.replaceChildren(...tasks.map(card));
  }

  function card(t) {
    const loc = t.location || {};
    const place = [loc.building, loc.floor !== null && loc.floor !== undefined ? `${loc.floor}层` : null, loc.place]
      .filter(Boolean).join(" · ");
    const due = GH.dueOf(t);
    const cd = GH.countdown(due);
    const error = el("p", { class: "error", "data-testid": "task-error" });
    const note = el("textarea", { rows: 2, placeholder: "备注（回退、返工、备注时必填）", "data-testid": "note" });
    note.value = S.drafts.get(t.id) || "";
    const actions = allowed(t);
    const resolution = actions.includes("resolve")
      ? el("select", { "data-testid": "resolution" },
          ...Object.entries({ fixed: "已处置", false_alarm: "误报", duplicate: "重复", referred_119: "已转119" })
            .map(([v, text]) => el("option", { value: v, text })))
      : null;
    const chosen = el("span", { class: "muted", text: "未选择照片" });
    const photo = t.assignee === S.me.id
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
      button.disabled = true;
      try {
        const updated = await GH.post(`/api/v1/tasks/${encodeURIComponent(t.id)}/${action}`, body);
        S.drafts.delete(t.id);
        note.value = "";
        if (updated.assignee === S.me.id && SHOWN_STATES.includes(updated.state)) S.tasks.set(t.id, updated);
        else S.tasks.delete(t.id);
        render();
      } catch (e) {
        error.textContent = e.message;
        button.disabled = false;
      }
    }

    async function upload(button) {
      error.textContent = "";
      if (!photo.files.length) { error.textContent = "请先选择照片"; return; }
      const form = new FormData();
      form.append("photo", photo.files[0]);
      if (note.value.trim()) form.append("note", note.value.trim());
      button.disabled = true;
      try {
        await GH.request(`/api/v1/tasks/${encodeURIComponent(t.id)}/photos`, { method: "POST", body: form });
        S.drafts.delete(t.id);
        note.value = "";
        S.tasks.set(t.id, await GH.get(`/api/v1/tasks/${encodeURIComponent(t.id)}`));
        render();
      } catch (e) {
        error.textContent = e.message;
        button.disabled = false;
      }
    }

    return el("article", { class: `card ${t.severity}`, "data-testid": "task-card", "data-task-id": t.id,
                           "data-state": t.state },
      el("h2", {}, el("span", { class: `badge ${t.severity}`, text: label("severity", t.severity) }),
        label("type", t.type), el("span", { class: "badge", "data-testid": "state", text: label("state", t.state) })),
      el("div", { class: "place", "data-testid": "place", text: place || t.device_id || "" }),
      el("div", { class: "muted", text: `${loc.grid || t.grid_id || ""} · 设备 ${t.device_id || "—"}${t.count > 1 ? ` · 报警${t.count}次` : ""}${t.escalation_level > 0 ? ` · 已升级 L${t.escalation_level}` : ""}` }),
      due ? el("div", { class: `due${cd.late ? " late" : ""}`, "data-due": due, "data-prefix": t.state === "open" ? "接单" : "办结",
                        "data-testid": "countdown", text: `${t.state === "open" ? "接单" : "办结"}${cd.text}` })
          : el("div", { class: "muted", text: t.state === "resolved" ? "已办结，等待核查" : "" }),
      note, resolution,
      photo ? el("div", { class: "actions" },
        el("label", { class: "filebtn" }, "拍照 / 选择照片", photo), chosen,
        el("button", { class: "secondary", "data-testid": "upload-photo", text: "上传照片",
                       onclick: (ev) => upload(ev.currentTarget) })) : null,
      el("div", { class: "actions" }, ...actions.map((a) => el("button", {
        class: ["accept", "arrive", "resolve", "close"].includes(a) ? "" : "secondary",
        "data-testid": `action-${a}`, text: label("action", a), onclick: (ev) => act(a, ev.currentTarget) }))),
      error,
      el("details", {}, el("summary", { text: `处理记录（${t.history.length}）` }),
        el("ul", { class: "history" }, ...t.history.map((h) => el("li", {
          text: `${GH.clock(h.at)} ${label("action", h.action)} ${h.actor}${h.note ? "：" + h.note : ""}` })))));
  }

  function tick() {
    for (const node of document.querySelectorAll("[data-due]")) {
      const cd = GH.countdown(node.dataset.due);
      node.textContent = (node.dataset.prefix || "") + cd.text;
      node.classList.toggle("late", cd.late);
    }
  }

  start();
})();

// gridhub pages: log-in, authenticated requests, the live stream and Chinese labels shared by the board and the worker page.
// The log-in is kept in localStorage with its expiry, so that it survives closing the page (a tapped notification
// opens the task, not the log-in form); log-out or an expired or refused token removes it.
"use strict";

const GH = (() => {
  const TOKEN_KEY = "gridhub.session";
  // The district's time zone (GRIDHUB_TIMEZONE), given by the page; times are shown in it whatever the phone's.
  const zone = document.documentElement.dataset.timezone;
  const TIME_ZONE = zone && !zone.includes("{") ? zone : undefined;
  const LABELS = {
    type: {
      fire_alarm: "火警", fire_incident: "火灾事件", sprinkler_critical: "喷淋压力危急", sprinkler_low: "喷淋压力低",
      sprinkler_high: "喷淋压力高", sprinkler_drop: "喷淋压力骤降", light_fault: "楼道灯故障", device_offline: "设备离线",
      device_fault: "设备故障", low_battery: "电量低", tamper: "设备被拆", exit_blocked: "安全出口堵塞",
      camera_obstructed: "摄像头遮挡", noisy_device: "频繁报警", patrol: "安全巡查", hazard: "隐患整改",
      recheck: "整改复查",
    },
    severity: { critical: "紧急", high: "高", normal: "一般", low: "低" },
    state: { open: "待接单", accepted: "已接单", on_site: "已到场", resolved: "待核查", closed: "已结案" },
    action: {
      open: "立案派遣", accept: "接单", arrive: "到场", resolve: "办结", close: "核查结案", reject: "返工",
      return: "回退", reassign: "改派", extend: "延期", comment: "备注", photo: "照片", escalate: "升级",
      remind: "催办", alert: "重复告警", clear: "告警消除", alert_cleared: "告警消除", notified: "已通知",
      reopen: "重新打开", found: "巡查发现隐患", report: "社区提报", confirm: "立案", dismiss: "不予立案",
      refer: "移交", recheck: "复查",
    },
    resolution: { fixed: "已处置", false_alarm: "误报", duplicate: "重复", referred_119: "已转119", recovered: "已恢复",
                  done: "已巡查" },
    kind: { smoke_alarm: "烟感", stairwell_light: "楼道灯", sprinkler_pressure: "喷淋压力", camera: "摄像头" },
    role: { grid_worker: "网格员", grid_head: "网格长", street_officer: "街道", bureau: "应急管理局", admin: "管理员" },
  };
  const SEVERITY_RANK = { critical: 0, high: 1, normal: 2, low: 3 };

  function label(group, key) {
    return (LABELS[group] && LABELS[group][key]) || key || "";
  }

  function session() {
    try { return JSON.parse(localStorage.getItem(TOKEN_KEY) || "null"); } catch (e) { return null; }
  }

  function token() {
    const s = session();
    if (!s || !s.token) return null;
    if (s.expires_at && Date.now() > s.expires_at) { localStorage.removeItem(TOKEN_KEY); return null; }
    return s.token;
  }

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; this.network = status === 0; }
  }

  async function request(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (token()) headers.Authorization = "Bearer " + token();
    let r;
    try {
      r = await fetch(path, Object.assign({}, options, { headers }));
    } catch (e) {
      throw new ApiError(0, "网络不可用，请稍后重试");
    }
    if (r.status === 401 && path !== "/api/v1/auth/token") {
      logOut();
      throw new ApiError(401, "登录已失效，请重新登录");
    }
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new ApiError(r.status, detail);
    }
    const type = r.headers.get("content-type") || "";
    if (type.startsWith("application/json")) return r.json();
    return r.blob();
  }

  const get = (path) => request(path);
  const post = (path, body) => request(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  });

  async function logIn(username, password) {
    const form = new URLSearchParams({ username, password });
    const r = await fetch("/api/v1/auth/token", { method: "POST", body: form });
    if (!r.ok) throw new ApiError(r.status, r.status === 401 ? "用户名或密码错误" : "登录失败");
    const answer = await r.json();
    localStorage.setItem(TOKEN_KEY, JSON.stringify({
      token: answer.access_token, expires_at: Date.now() + (answer.expires_in || 3600) * 1000 - 60000 }));
    return get("/api/v1/me");
  }

  function logOut() {
    localStorage.removeItem(TOKEN_KEY);
    if (GH.onLogOut) GH.onLogOut();
  }

  // Live alert and task changes. Each connection asks for a one-use stream ticket (POST /api/v1/stream/ticket), so
  // the log-in token never travels in a URL. A ticket opens one stream, and the hub ends a stream when the log-in
  // expires, is revoked or the person's scope changes: on any error the source is closed and, 3 s later, reopened
  // with a new ticket after the last event seen (`last_event_id`). A 401 for the ticket logs out (request does).
  // Returns { close() }.
  function live(handlers, onStatus) {
    let source = null, timer = null, closed = false, lastId = null;
    const status = (on) => onStatus && onStatus(on);
    function again() { if (!closed && !timer) timer = setTimeout(open, 3000); }
    async function open() {
      timer = null;
      let ticket;
      try {
        ticket = (await post("/api/v1/stream/ticket")).ticket;
      } catch (e) {
        status(false);
        if (e.status !== 401) again();
        return;
      }
      if (closed) return;
      const query = new URLSearchParams({ ticket });
      if (lastId) query.set("last_event_id", lastId);
      const es = new EventSource("/api/v1/stream?" + query);
      source = es;
      es.addEventListener("open", () => status(true));
      es.addEventListener("error", () => {
        es.close();
        if (source !== es) return;
        source = null;
        status(false);
        again();
      });
      for (const kind of ["alert", "task"]) {
        es.addEventListener(kind, (ev) => {
          if (ev.lastEventId) lastId = ev.lastEventId;
          try { handlers[kind] && handlers[kind](JSON.parse(ev.data), ev.lastEventId); } catch (e) { console.error(e); }
        });
      }
    }
    open();
    return {
      close() { closed = true; clearTimeout(timer); timer = null; if (source) source.close(); source = null; },
    };
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function countdown(due) {
    if (!due) return { text: "—", late: false };
    let s = Math.round((new Date(due).getTime() - Date.now()) / 1000);
    const late = s < 0;
    s = Math.abs(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const pad = (n) => String(n).padStart(2, "0");
    const body = d > 0 ? `${d}天${h}时` : h > 0 ? `${h}:${pad(m)}:${pad(sec)}` : `${pad(m)}:${pad(sec)}`;
    return { text: late ? `超时 ${body}` : `剩余 ${body}`, late };
  }

  const CLOCK = new Intl.DateTimeFormat("zh-CN", { hour12: false, month: "2-digit", day: "2-digit", hour: "2-digit",
                                                   minute: "2-digit", second: "2-digit", timeZone: TIME_ZONE });
  const SHORT = new Intl.DateTimeFormat("zh-CN", { hour12: false, month: "2-digit", day: "2-digit", hour: "2-digit",
                                                   minute: "2-digit", timeZone: TIME_ZONE });

  // A time in the district's zone: "12/07 16:05:09" (short: without seconds).
  function clock(t, short) {
    if (!t) return "";
    return (short ? SHORT : CLOCK).format(new Date(t));
  }

  // The due time that matters now: accepting while open, resolving after that.
  function dueOf(task) {
    if (task.state === "open") return task.accept_due;
    if (task.state === "accepted" || task.state === "on_site") return task.resolve_due;
    return null;
  }

  function loginForm(container, title, onDone) {
    const error = el("p", { class: "error", "data-testid": "login-error" });
    const user = el("input", { name: "username", autocomplete: "username", placeholder: "工号，如 b-001", required: true });
    const pass = el("input", { name: "password", type: "password", autocomplete: "current-password",
                               placeholder: "密码", required: true });
    const form = el("form", { class: "login", "data-testid": "login-form" },
      el("h1", { text: title }),
      el("label", {}, "工号", user), el("label", {}, "密码", pass),
      el("button", { type: "submit", text: "登录" }), error);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      try { onDone(await logIn(user.value.trim(), pass.value)); } catch (e) { error.textContent = e.message; }
    });
    container.replaceChildren(form);
    user.focus();
  }

  return { label, token, get, post, request, logIn, logOut, live, el, countdown, clock, dueOf, loginForm,
           SEVERITY_RANK, ApiError, TIME_ZONE, LABELS, onLogOut: null };
})();

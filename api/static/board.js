// The bureau board: the district's grids coloured by their worst open alert, alerts, the task board, a sprinkler
// pressure chart, evidence of blocked exits and KPIs per community, kept live by the change stream; a map of the
// buildings (Leaflet, vendored) coloured by their worst open alert, where a click filters the alert and task lists.
"use strict";

(() => {
  const { el, label } = GH;
  const app = document.getElementById("app");
  const S = { me: null, summary: null, alerts: new Map(), tasks: new Map(), source: null, fresh: new Set(),
              chart: null, timers: {}, buildings: [], building: null, lmap: null, layer: null, fitted: "" };
  const MAP = { tiles: app.dataset.mapTiles || "", subdomains: app.dataset.mapSubdomains || "abc",
                coords: app.dataset.mapCoords === "gcj02" ? "gcj02" : "wgs84" };
  const SEV_COLOURS = { critical: "#e5484d", high: "#f5a623", normal: "#e8d44d", low: "#4ea1f3", none: "#30a46c" };
  const OPEN_TASK_STATES = ["open", "accepted", "on_site", "resolved"];
  const KPI_LABELS = { closure_rate: "结案率", on_time_closure_rate: "按期结案率", on_time_rate: "按期结案率",
                       mean_accept_s: "平均接单用时", mean_time_to_accept_s: "平均接单用时",
                       mean_resolve_s: "平均办结用时", mean_time_to_resolve_s: "平均办结用时",
                       due: "应结案数", closed: "已结案", closed_on_time: "按期结案", tasks: "任务数" };

  GH.onLogOut = () => { if (S.source) S.source.close(); S.source = null; start(); };

  function start() {
    if (!GH.token()) { GH.loginForm(app, "社区安全监管看板", boot); return; }
    GH.get("/api/v1/me").then(boot).catch(() => GH.loginForm(app, "社区安全监管看板", boot));
  }

  function section(id, title, wide, ...body) {
    return el("section", { id, class: wide ? "wide" : "", "data-testid": id }, el("h2", { text: title }), ...body);
  }

  function boot(me) {
    S.me = me;
    const liveBadge = el("span", { class: "live", id: "live", "data-testid": "live", text: "连接中" });
    app.replaceChildren(
      el("header", {},
        el("h1", { text: "社区安全监管看板" }),
        liveBadge,
        el("span", { class: "who", "data-testid": "who", text: `${me.name}（${label("role", me.role)}）` }),
        el("button", { onclick: () => GH.logOut(), text: "退出" })),
      el("main", {},
        section("totals", "概况", true, el("div", { class: "totals", id: "totals-body" })),
        section("map", "辖区网格（按最严重的未消除告警着色）", false, el("div", { id: "map-body" })),
        section("bmap", "地图：楼栋与告警（按最严重的未消除告警着色）", true,
          el("div", { class: "map-legend", id: "bmap-legend" }),
          el("div", { id: "bmap-canvas", "data-testid": "bmap-canvas", "data-coords": MAP.coords,
                      "data-tiles": MAP.tiles ? "on" : "off" }),
          el("div", { id: "bmap-unplaced", "data-testid": "bmap-unplaced" })),
        section("alerts", "活动告警", false, el("div", { class: "alerts", id: "alerts-body" })),
        section("tasks", "任务看板（期限与升级）", true, el("div", { class: "taskboard", id: "tasks-body" })),
        section("chart", "喷淋管网压力", false,
          el("div", { class: "chart-controls" },
            el("select", { id: "sprinkler", "data-testid": "sprinkler-select", onchange: drawChart }),
            el("select", { id: "range", onchange: drawChart },
              el("option", { value: "24h", text: "近24小时（原始）" }),
              el("option", { value: "7d", text: "近7天（小时均值）" }))),
          el("div", { id: "chart-body" })),
        section("evidence", "安全出口堵塞与现场照片", false, el("div", { class: "evidence", id: "evidence-body" })),
        section("kpis", "各社区考核指标（近30天）", true, el("div", { id: "kpis-body" }))));
    S.source = GH.live({ alert: onAlert, task: onTask }, (on) => {
      liveBadge.className = on ? "live on" : "live";
      liveBadge.textContent = on ? "实时" : "重连中";
    });
    S.lmap = null; S.layer = null; S.fitted = "";
    Promise.all([loadSummary(), loadAlerts(), loadTasks(), loadBuildings()]).then(renderAll);
    loadSprinklers();
    loadEvidence();
    loadKpis();
    clearInterval(S.timers.tick);
    S.timers.tick = setInterval(tick, 1000);
    clearInterval(S.timers.summary);
    S.timers.summary = setInterval(loadSummaryAndRender, 30000);
  }

  async function loadSummary() {
    try { S.summary = await GH.get("/api/v1/summary"); } catch (e) { S.summary = { error: e.message }; }
  }

  async function loadAlerts() {
    const page = await GH.get("/api/v1/alerts?state=active&limit=500");
    S.alerts = new Map(page.items.map((a) => [a.id, a]));
  }

  async function loadTasks() {
    const page = await GH.get(`/api/v1/tasks?state=${OPEN_TASK_STATES.join(",")}&limit=1000`);
    S.tasks = new Map(page.items.map((t) => [t.id, t]));
  }

  function debounce(name, fn, ms) {
    clearTimeout(S.timers[name]);
    S.timers[name] = setTimeout(fn, ms);
  }

  async function loadSummaryAndRender() { await loadSummary(); renderTotals(); renderMap(); }

  function onAlert(alert) {
    if (alert.state === "active") {
      if (!S.alerts.has(alert.id)) S.fresh.add(alert.id);
      S.alerts.set(alert.id, alert);
    } else {
      S.alerts.delete(alert.id);
    }
    renderAlerts();
    renderTotals();
    debounce("summary", loadSummaryAndRender, 300);
    if (alert.type === "exit_blocked") debounce("evidence", loadEvidence, 1500);
    debounce("buildings", () => loadBuildings().then(renderBuildingMap), 300);
  }

  async function onTask(task) {
    // the stream carries the engine's task shape; the list shape adds where the task is
    try {
      const full = await GH.get(`/api/v1/tasks/${encodeURIComponent(task.id)}`);
      if (OPEN_TASK_STATES.includes(full.state)) S.tasks.set(full.id, full); else S.tasks.delete(full.id);
      const last = full.history[full.history.length - 1];
      if (last && last.action === "photo") debounce("evidence", loadEvidence, 500);
    } catch (e) {
      S.tasks.delete(task.id);
    }
    renderTasks();
    debounce("summary", loadSummaryAndRender, 300);
  }

  function renderAll() { renderTotals(); renderMap(); renderBuildingMap(); renderAlerts(); renderTasks(); }

  // ---------------------------------------------------------------- the map of buildings (issue 14)

  // WGS-84 → GCJ-02, the published public transform (Krasovsky 1940 ellipsoid); gridhub/geo.py is the same formula
  // and tests/unit/test_geo.py checks it against 天安门. Outside China the point is unchanged.
  function wgs84ToGcj02(lat, lon) {
    if (!(lon >= 72.004 && lon <= 137.8347 && lat >= 0.8293 && lat <= 55.8271)) return [lat, lon];
    const a = 6378245.0, ee = 0.00669342162296594323, PI = Math.PI;
    const x = lon - 105.0, y = lat - 35.0;
    let dLat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * Math.sqrt(Math.abs(x));
    dLat += (20.0 * Math.sin(6.0 * x * PI) + 20.0 * Math.sin(2.0 * x * PI)) * 2.0 / 3.0;
    dLat += (20.0 * Math.sin(y * PI) + 40.0 * Math.sin(y / 3.0 * PI)) * 2.0 / 3.0;
    dLat += (160.0 * Math.sin(y / 12.0 * PI) + 320.0 * Math.sin(y * PI / 30.0)) * 2.0 / 3.0;
    let dLon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * Math.sqrt(Math.abs(x));
    dLon += (20.0 * Math.sin(6.0 * x * PI) + 20.0 * Math.sin(2.0 * x * PI)) * 2.0 / 3.0;
    dLon += (20.0 * Math.sin(x * PI) + 40.0 * Math.sin(x / 3.0 * PI)) * 2.0 / 3.0;
    dLon += (150.0 * Math.sin(x / 12.0 * PI) + 300.0 * Math.sin(x / 30.0 * PI)) * 2.0 / 3.0;
    const rad = lat / 180.0 * PI;
    const magic = 1 - ee * Math.sin(rad) * Math.sin(rad);
    const sqrtMagic = Math.sqrt(magic);
    dLat = (dLat * 180.0) / ((a * (1 - ee)) / (magic * sqrtMagic) * PI);
    dLon = (dLon * 180.0) / (a / sqrtMagic * Math.cos(rad) * PI);
    return [lat + dLat, lon + dLon];
  }
  window.GHMap = { wgs84ToGcj02 };

  function mapPosition(b) { return MAP.coords === "gcj02" ? wgs84ToGcj02(b.lat, b.lon) : [b.lat, b.lon]; }

  async function loadBuildings() {
    try { S.buildings = (await GH.get("/api/v1/map/buildings")).items; } catch (e) { S.buildings = []; }
  }

  function setBuildingFilter(b) {
    S.building = b ? { id: b.id, name: b.name } : null;
    renderBuildingMap(); renderAlerts(); renderTasks();
  }

  function filterChip() {
    if (!S.building) return null;
    return el("div", { class: "filter-chip", "data-testid": "building-filter", "data-building": S.building.id },
      el("span", { text: `楼栋：${S.building.name}` }),
      el("button", { "data-testid": "building-filter-clear", title: "清除楼栋筛选", text: "×",
                     onclick: () => setBuildingFilter(null) }));
  }

  function markerTitle(b) {
    return `${b.name}（${b.grid_name}）· 单位 ${b.units} · 告警 ${b.open_alerts}`
      + (b.worst ? `（最高：${label("severity", b.worst)}）` : "");
  }

  function renderBuildingMap() {
    const canvas = document.getElementById("bmap-canvas");
    if (!canvas) return;
    const legend = document.getElementById("bmap-legend");
    legend.replaceChildren(...["critical", "high", "normal", "low"].map((s) => el("span", { class: "legend-item" },
      el("i", { style: `background:${SEV_COLOURS[s]}` }), el("span", { text: label("severity", s) }))),
      el("span", { class: "legend-item" }, el("i", { style: `background:${SEV_COLOURS.none}` }),
        el("span", { text: "无告警" })),
      el("span", { class: "muted", text: MAP.tiles ? `底图：已配置（${MAP.coords === "gcj02" ? "GCJ-02" : "WGS-84"}）`
                                                  : "底图：未配置，矢量视图" }),
      ...[filterChip()].filter(Boolean));
    const placed = S.buildings.filter((b) => b.lat !== null && b.lon !== null);
    const unplaced = S.buildings.filter((b) => b.lat === null || b.lon === null);
    const unplacedBox = document.getElementById("bmap-unplaced");
    unplacedBox.replaceChildren(...(unplaced.length ? [el("span", { class: "muted", text: `未登记坐标（${unplaced.length}）：` }),
      ...unplaced.map((b) => el("button", { class: `unplaced sev-${b.worst || "none"}`, "data-testid": "unplaced-building",
        "data-building": b.id, title: markerTitle(b), text: `${b.name}${b.open_alerts ? " · 告警" + b.open_alerts : ""}`,
        onclick: () => setBuildingFilter(b) }))] : []));
    if (typeof L === "undefined") { canvas.replaceChildren(el("p", { class: "error", text: "地图组件未加载" })); return; }
    if (!S.lmap) {
      canvas.replaceChildren();
      canvas.classList.toggle("vector", !MAP.tiles);
      S.lmap = L.map(canvas, { zoomControl: true, attributionControl: !!MAP.tiles, preferCanvas: false });
      if (MAP.tiles) L.tileLayer(MAP.tiles, { subdomains: MAP.subdomains, maxZoom: 18 }).addTo(S.lmap);
      S.layer = L.layerGroup().addTo(S.lmap);
    }
    S.layer.clearLayers();
    // the view first: a layer added to a map without one waits for it, and its element with it
    const points = placed.map(mapPosition);
    const key = points.map((p) => p.join(",")).join(";");
    if (key !== S.fitted) {
      S.fitted = key;
      if (points.length === 1) S.lmap.setView(points[0], 17);
      else if (points.length) S.lmap.fitBounds(L.latLngBounds(points), { padding: [30, 30], maxZoom: 17 });
      else S.lmap.setView([0, 0], 1);
    }
    placed.forEach((b, i) => {
      const pos = points[i];
      const w = b.worst || "none";
      const selected = S.building && S.building.id === b.id;
      const marker = L.circleMarker(pos, { radius: selected ? 12 : 9, color: selected ? "#ffffff" : "#0b111a",
        weight: selected ? 3 : 2, fillColor: SEV_COLOURS[w], fillOpacity: 0.9 });
      marker.bindTooltip(markerTitle(b), { permanent: !MAP.tiles, direction: "top", offset: [0, -8] });
      marker.on("click", () => setBuildingFilter(selected ? null : b));
      marker.addTo(S.layer);
      const node = marker.getElement();
      if (node) {
        node.setAttribute("data-testid", "map-marker");
        node.setAttribute("data-building", b.id);
        node.setAttribute("data-worst", w);
        node.setAttribute("data-lat", String(pos[0]));
        node.setAttribute("data-lon", String(pos[1]));
      }
    });
    canvas.dataset.markers = String(points.length);
  }

  function worst(counts) {
    for (const s of ["critical", "high", "normal", "low"]) if (counts[s] > 0) return s;
    return null;
  }

  function renderTotals() {
    const box = document.getElementById("totals-body");
    if (!box) return;
    const sev = { critical: 0, high: 0, normal: 0, low: 0 };
    for (const a of S.alerts.values()) sev[a.severity] = (sev[a.severity] || 0) + 1;
    let online = 0, offline = 0;
    const grids = (S.summary && S.summary.streets || []).flatMap((s) => s.communities.flatMap((c) => c.grids));
    for (const g of grids) { online += g.devices.online; offline += g.devices.offline; }
    const tasks = [...S.tasks.values()];
    const overdue = tasks.filter((t) => GH.countdown(GH.dueOf(t)).late && GH.dueOf(t)).length;
    const item = (cls, n, text, id) => el("div", { class: `total ${cls}`, "data-testid": id }, el("b", { text: n }),
                                          el("span", { text }));
    box.replaceChildren(
      item("ok", online, "设备在线", "total-online"), item("offline", offline, "设备离线", "total-offline"),
      item("critical", sev.critical, "紧急告警", "total-critical"), item("high", sev.high, "高级告警", "total-high"),
      item("normal", sev.normal, "一般告警", "total-normal"), item("low", sev.low, "低级告警", "total-low"),
      item("", tasks.length, "未结案任务", "total-tasks"), item("critical", overdue, "超时任务", "total-overdue"));
  }

  function renderMap() {
    const box = document.getElementById("map-body");
    if (!box) return;
    if (!S.summary || S.summary.error) {
      box.replaceChildren(el("p", { class: "muted", text: "辖区网格图面向街道、应急管理局和管理员。" }));
      return;
    }
    box.replaceChildren(...S.summary.streets.map((street) => el("div", { class: "street" },
      el("h3", { text: street.name }),
      ...street.communities.map((c) => el("div", { class: "community" },
        el("h4", { text: c.name }),
        el("div", { class: "grids" }, ...c.grids.map((g) => {
          const w = worst(g.alerts);
          const active = g.alerts.critical + g.alerts.high + g.alerts.normal + g.alerts.low;
          return el("div", { class: `cell${w ? " sev-" + w : ""}`, "data-testid": `grid-${g.id}`,
                             "data-worst": w || "none", title: g.id },
            el("b", { text: g.name }),
            el("small", { text: `设备 在线${g.devices.online} / 离线${g.devices.offline}` }),
            el("small", { text: `告警 ${active}${w ? "（最高：" + label("severity", w) + "）" : ""}` }),
            el("small", { text: `任务 ${g.tasks.open}，超时 ${g.tasks.overdue}` }));
        })))))));
  }

  function renderAlerts() {
    const box = document.getElementById("alerts-body");
    if (!box) return;
    const rows = [...S.alerts.values()].filter((a) => !S.building || a.building_id === S.building.id).sort((a, b) =>
      GH.SEVERITY_RANK[a.severity] - GH.SEVERITY_RANK[b.severity] || (a.last_seen < b.last_seen ? 1 : -1));
    if (!rows.length) {
      box.replaceChildren(...[filterChip(), el("p", { class: "muted", text: S.building ? "该楼栋暂无活动告警" : "暂无活动告警" })]
        .filter(Boolean));
      return;
    }
    box.replaceChildren(...[filterChip()].filter(Boolean), el("table", {},
      el("thead", {}, el("tr", {}, ...["级别", "类型", "设备", "楼栋", "最近", "次数", ""].map((t) => el("th", { text: t })))),
      el("tbody", {}, ...rows.map((a) => {
        const tr = el("tr", { "data-testid": "alert-row", "data-alert-id": a.id, "data-type": a.type,
                              class: S.fresh.has(a.id) ? "new" : "" },
          el("td", {}, el("span", { class: `badge ${a.severity}`, text: label("severity", a.severity) })),
          el("td", { text: label("type", a.type) }), el("td", { text: a.device_id || "" }),
          el("td", { text: a.building_id || "" }), el("td", { text: GH.clock(a.last_seen) }),
          el("td", { text: a.count }),
          el("td", {}, a.acked ? el("span", { class: "muted", text: "已确认" })
            : el("button", { text: "确认", onclick: () => GH.post(`/api/v1/alerts/${encodeURIComponent(a.id)}/ack`)
                .then(onAlert).catch((e) => alert(e.message)) })));
        return tr;
      }))));
    S.fresh.clear();
  }

  function taskCard(t) {
    const due = GH.dueOf(t);
    const cd = GH.countdown(due);
    const loc = t.location || {};
    const where = [loc.building, loc.floor !== null && loc.floor !== undefined ? `${loc.floor}层` : "", loc.place]
      .filter(Boolean).join(" ");
    return el("div", { class: `task ${t.severity}`, "data-testid": "task-card", "data-task-id": t.id, "data-state": t.state },
      el("div", {}, el("span", { class: `badge ${t.severity}`, text: label("severity", t.severity) }),
        el("b", { text: label("type", t.type) }), t.count > 1 ? el("span", { class: "muted", text: ` ×${t.count}` }) : null,
        t.escalation_level > 0 ? el("span", { class: "badge esc", "data-testid": "escalated",
                                              text: ` 已升级 L${t.escalation_level}` }) : null),
      el("div", { class: "muted", text: `${loc.grid || t.grid_id || ""} · ${where || t.device_id || ""}` }),
      el("div", { class: "muted", text: `负责人：${t.assignee_name || t.assignee || "未指派"}` }),
      due ? el("div", { class: `due${cd.late ? " late" : ""}`, "data-due": due,
                        "data-prefix": t.state === "open" ? "接单" : "办结",
                        text: `${t.state === "open" ? "接单" : "办结"}${cd.text}` })
          : el("div", { class: "muted", text: t.resolution ? `办结：${label("resolution", t.resolution)}` : "" }));
  }

  function renderTasks() {
    const box = document.getElementById("tasks-body");
    if (!box) return;
    const tasks = [...S.tasks.values()].filter((t) => !S.building || t.building_id === S.building.id).sort((a, b) => GH.SEVERITY_RANK[a.severity] - GH.SEVERITY_RANK[b.severity]
      || String(GH.dueOf(a) || "9").localeCompare(String(GH.dueOf(b) || "9")));
    const chip = filterChip();
    box.classList.toggle("filtered", !!chip);
    box.replaceChildren(...(chip ? [chip] : []), ...OPEN_TASK_STATES.map((state) => {
      const mine = tasks.filter((t) => t.state === state);
      return el("div", { class: "column", "data-testid": `column-${state}` },
        el("h3", { text: `${label("state", state)}（${mine.length}）` }), ...mine.map(taskCard));
    }));
  }

  function tick() {
    for (const node of document.querySelectorAll("[data-due]")) {
      const cd = GH.countdown(node.dataset.due);
      node.textContent = (node.dataset.prefix || "") + cd.text;
      node.classList.toggle("late", cd.late);
    }
  }

  async function loadSprinklers() {
    const select = document.getElementById("sprinkler");
    try {
      const page = await GH.get("/api/v1/devices?kind=sprinkler_pressure&limit=1000");
      select.replaceChildren(...page.items.map((d) => el("option", { value: d.id,
        text: `${d.id}${d.place ? " · " + d.place : ""}${d.latest.pressure_mpa !== undefined ? " · " + d.latest.pressure_mpa + " MPa" : ""}` })));
      if (page.items.length) drawChart();
      else document.getElementById("chart-body").replaceChildren(el("p", { class: "muted", text: "没有喷淋压力传感器" }));
    } catch (e) {
      document.getElementById("chart-body").replaceChildren(el("p", { class: "error", text: e.message }));
    }
  }

  async function drawChart() {
    const device = document.getElementById("sprinkler").value;
    const range = document.getElementById("range").value;
    const box = document.getElementById("chart-body");
    if (!device) return;
    const end = new Date();
    const start = new Date(end.getTime() - (range === "7d" ? 7 * 86400e3 : 86400e3));
    const q = new URLSearchParams({ metric: "pressure_mpa", start: start.toISOString(), end: end.toISOString() });
    if (range === "7d") q.set("bucket", "1h");
    const data = await GH.get(`/api/v1/devices/${encodeURIComponent(device)}/readings?${q}`);
    const xs = data.points.map((p) => new Date(p.ts).getTime() / 1000);
    const low = xs.map(() => 0.10);
    let series, columns;
    if (range === "7d") {
      columns = [xs, data.points.map((p) => p.min), data.points.map((p) => p.avg), data.points.map((p) => p.max), low];
      series = [{}, { label: "最小", stroke: "#4ea1f3" }, { label: "均值", stroke: "#30a46c", width: 2 },
                { label: "最大", stroke: "#f5a623" }, { label: "低压线 0.10", stroke: "#e5484d", dash: [6, 4] }];
    } else {
      columns = [xs, data.points.map((p) => p.value), low];
      series = [{}, { label: "压力 MPa", stroke: "#30a46c", width: 2 }, { label: "低压线 0.10", stroke: "#e5484d", dash: [6, 4] }];
    }
    if (S.chart) { S.chart.destroy(); S.chart = null; }
    box.replaceChildren();
    if (!xs.length) { box.append(el("p", { class: "muted", "data-testid": "chart-empty", text: "该时段无读数" })); return; }
    const width = Math.max(300, box.clientWidth || 500);
    S.chart = new uPlot({ width, height: 240, series,
      axes: [{ stroke: "#8da2ba", grid: { stroke: "#26364b" } }, { stroke: "#8da2ba", grid: { stroke: "#26364b" } }],
      scales: { x: { time: true } } }, columns, box);
  }

  async function loadEvidence() {
    const box = document.getElementById("evidence-body");
    if (!box) return;
    try {
      const page = await GH.get("/api/v1/evidence?limit=8");
      if (!page.items.length) { box.replaceChildren(el("p", { class: "muted", text: "暂无图片证据" })); return; }
      const figures = await Promise.all(page.items.map(async (e) => {
        const blob = await GH.get(e.url);
        return el("figure", { "data-testid": "evidence-item" },
          el("img", { src: URL.createObjectURL(blob), alt: e.kind === "photo" ? "现场照片" : "出口堵塞识别" }),
          el("figcaption", { text: `${e.kind === "photo" ? "现场照片" : "堵塞识别"} · ${e.device_id || ""} · ${GH.clock(e.created_at)}` }));
      }));
      for (const img of box.querySelectorAll("img")) URL.revokeObjectURL(img.src);
      box.replaceChildren(...figures);
    } catch (e) {
      box.replaceChildren(el("p", { class: "error", text: e.message }));
    }
  }

  function kpiValue(key, v) {
    if (v === null || v === undefined) return "—";
    if (typeof v !== "number") return String(v);
    if (key.endsWith("rate")) return `${(v * 100).toFixed(1)}%`;
    if (key.endsWith("_s")) return v >= 3600 ? `${(v / 3600).toFixed(1)} 小时` : `${(v / 60).toFixed(1)} 分钟`;
    return String(v);
  }

  async function loadKpis() {
    const box = document.getElementById("kpis-body");
    try {
      const body = await GH.get("/api/v1/kpis?level=community");
      const rows = body.items || body.rows || body.communities || [];
      if (!rows.length) { box.replaceChildren(el("p", { class: "muted", text: "该时段无到期任务" })); return; }
      const keys = ["closure_rate", "on_time_closure_rate", "mean_accept_s", "mean_resolve_s", "due", "closed",
                    "closed_on_time"].filter((k) => k in rows[0]);
      box.replaceChildren(el("table", { "data-testid": "kpi-table" },
        el("thead", {}, el("tr", {}, el("th", { text: "社区" }), ...keys.map((k) => el("th", { text: KPI_LABELS[k] || k })))),
        el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", { text: r.name || r.id }),
          ...keys.map((k) => el("td", { text: kpiValue(k, r[k]) })))))));
    } catch (e) {
      box.replaceChildren(el("p", { class: "muted", text: e.status === 403 ? "考核指标不对网格员开放" : e.message }));
    }
  }

  start();
})();

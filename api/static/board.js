// The bureau board: the district's grids coloured by their worst open alert, alerts, the task board, a sprinkler
// pressure chart, evidence of blocked exits and KPIs per community, kept live by the change stream; a map of the
// buildings and units (Leaflet, vendored) coloured by their status from GET /api/v1/map/buildings (critical > high
// alert > open hazard task > overdue patrol > normal/low alert > clear), where a click filters the alert and task
// lists; the year's patrol progress per grid (GET /api/v1/kpis/patrols) beside the task board. Task changes on the
// stream reload the map's statuses and the patrol progress.
"use strict";

(() => {
  const { el, label } = GH;
  const app = document.getElementById("app");
  const S = { me: null, summary: null, alerts: new Map(), tasks: new Map(), source: null, fresh: new Set(),
              chart: null, timers: {}, buildings: [], units: [], filter: null, lmap: null, layer: null, fitted: "",
              patrols: null };
  const MAP = { tiles: app.dataset.mapTiles || "", subdomains: app.dataset.mapSubdomains || "abc",
                coords: app.dataset.mapCoords === "gcj02" ? "gcj02" : "wgs84" };
  const SEV_COLOURS = { critical: "#e5484d", high: "#f5a623", normal: "#e8d44d", low: "#4ea1f3", none: "#30a46c" };
  // a marker's status (routes_map.py), worst first, with its colour and its label
  const STATUS_ORDER = ["critical", "high", "hazard", "overdue", "normal", "low", "clear"];
  const STATUS_COLOURS = { critical: "#e5484d", high: "#f5a623", hazard: "#d6409f", overdue: "#8e6cf0",
                           normal: "#e8d44d", low: "#4ea1f3", clear: "#30a46c" };
  const STATUS_LABELS = { critical: "紧急告警", high: "高级告警", hazard: "隐患未整改", overdue: "巡查逾期",
                          normal: "一般告警", low: "低级告警", clear: "正常" };
  const UNIT_CLASSES = { key: "重点单位", general: "一般单位", shop: "个体经营户", major_hazard: "重大危险源" };
  // the grid's own work (CONTRACT §7), until common.js labels it
  const MORE_TYPES = { patrol: "安全巡查", hazard: "事故隐患", recheck: "整改复查" };
  const typeLabel = (t) => MORE_TYPES[t] && label("type", t) === t ? MORE_TYPES[t] : label("type", t);
  const resolutionLabel = (r) => r === "done" && label("resolution", r) === r ? "已完成" : label("resolution", r);
  const PATROL_TYPES = ["patrol", "hazard", "recheck"];
  // the district's time zone (GRIDHUB_TIMEZONE) when the page names it, else the default one
  const ZONE = (() => {
    const z = document.documentElement.dataset.timezone;
    return z && !z.includes("{") ? z : "Asia/Shanghai";
  })();
  function districtYear() {
    try { return Number(new Intl.DateTimeFormat("en-CA", { timeZone: ZONE, year: "numeric" }).format(new Date())); }
    catch (e) { return new Date().getFullYear(); }
  }
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
        section("alerts", "活动告警", false, el("div", { class: "alerts", id: "alerts-body" })),
        section("bmap", "地图：楼栋与单位（按告警、隐患和逾期巡查着色）", true,
          el("div", { class: "map-legend", id: "bmap-legend" }),
          el("div", { id: "bmap-canvas", "data-testid": "bmap-canvas", "data-coords": MAP.coords,
                      "data-tiles": MAP.tiles ? "on" : "off" }),
          el("div", { id: "bmap-unplaced", "data-testid": "bmap-unplaced" })),
        section("tasks", "任务看板（期限与升级）", false, el("div", { class: "taskboard", id: "tasks-body" })),
        section("patrols", `巡查进度（${districtYear()}年，按网格）`, false,
          el("div", { id: "patrols-body", "data-testid": "patrols-body" })),
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
    loadPatrols();
    loadSprinklers();
    loadEvidence();
    loadKpis();
    clearInterval(S.timers.tick);
    S.timers.tick = setInterval(tick, 1000);
    clearInterval(S.timers.summary);
    S.timers.summary = setInterval(loadSummaryAndRender, 30000);
    // a patrol becomes overdue when its period ends, whether or not a change says so
    clearInterval(S.timers.slow);
    S.timers.slow = setInterval(() => { reloadBuildings(); loadPatrols(); }, 60000);
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
    debounce("buildings", reloadBuildings, 300);
  }

  function reloadBuildings() { return loadBuildings().then(() => { renderBuildingMap(); renderPatrols(); }); }

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
    // a task change may open or close a hazard or finish an overdue patrol: the markers' status, and the patrol
    // progress for the grid's own work
    debounce("buildings", reloadBuildings, 300);
    if (!task.type || PATROL_TYPES.includes(task.type)) debounce("patrols", loadPatrols, 500);
  }

  function renderAll() { renderTotals(); renderMap(); renderBuildingMap(); renderAlerts(); renderTasks(); if (S.patrols) renderPatrols(); }

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
    try {
      const body = await GH.get("/api/v1/map/buildings");
      S.buildings = body.items;
      S.units = body.units || [];
    } catch (e) { S.buildings = []; S.units = []; }
  }

  // The lists' filter: a building (its alerts and tasks), or a unit (the tasks about it, and the alerts of its
  // building: alerts come from devices, which are in buildings, not units). Null: everything in scope.
  function setFilter(f) {
    S.filter = f;
    renderBuildingMap(); renderAlerts(); renderTasks();
  }

  function buildingFilter(b) { return { kind: "building", id: b.id, name: b.name, building: b.id }; }

  function unitFilter(u) {
    return { kind: "unit", id: u.id, name: u.name, building: u.building_id, building_name: u.building_name };
  }

  function toggle(f) { setFilter(S.filter && S.filter.kind === f.kind && S.filter.id === f.id ? null : f); }

  function taskUnit(t) {
    return t.unit_id || (t.patrol && t.patrol.unit_id) || (t.detail && t.detail.unit) || null;
  }

  function taskMatches(t) {
    if (!S.filter) return true;
    if (S.filter.kind === "unit") return taskUnit(t) === S.filter.id;
    return t.building_id === S.filter.building;
  }

  function alertMatches(a) {
    if (!S.filter) return true;
    return !!S.filter.building && a.building_id === S.filter.building;
  }

  function filterChip() {
    const f = S.filter;
    if (!f) return null;
    const text = f.kind === "unit"
      ? `单位：${f.name}${f.building_name ? "（" + f.building_name + "）" : "（未登记楼栋）"}`
      : `楼栋：${f.name}`;
    return el("div", { class: "filter-chip", "data-testid": "building-filter", "data-kind": f.kind,
                       "data-building": f.building || "", "data-unit": f.kind === "unit" ? f.id : null },
      el("span", { text: `已筛选 ${text}` }),
      el("button", { "data-testid": "building-filter-clear", title: "清除筛选，显示全部", text: "× 清除筛选",
                     onclick: () => setFilter(null) }));
  }

  function statusCounts(p) {
    const parts = [];
    if (p.open_alerts) parts.push(`告警 ${p.open_alerts}`);
    if (p.hazards) parts.push(`隐患 ${p.hazards}`);
    if (p.overdue_patrols) parts.push(`逾期巡查 ${p.overdue_patrols}`);
    return parts.join(" · ");
  }

  function markerTitle(b) {
    const counts = statusCounts(b);
    return `${b.name}（${b.grid_name}）· 单位 ${b.units}${counts ? " · " + counts : ""}`
      + `（${STATUS_LABELS[b.status] || "正常"}）`;
  }

  function unitTitle(u) {
    const counts = statusCounts(u);
    return `${u.name}（${UNIT_CLASSES[u.class] || u.class}，${u.building_name || "未登记楼栋"}）`
      + `${counts ? " · " + counts : ""}（${STATUS_LABELS[u.status] || "正常"}）`;
  }

  const statusOf = (p) => (STATUS_COLOURS[p.status] ? p.status : (p.worst || "clear"));

  function renderBuildingMap() {
    const canvas = document.getElementById("bmap-canvas");
    if (!canvas) return;
    const legend = document.getElementById("bmap-legend");
    legend.replaceChildren(...STATUS_ORDER.map((s) => el("span", { class: "legend-item", "data-status": s },
      el("i", { class: `st-${s}` }), el("span", { text: STATUS_LABELS[s] }))),
      el("span", { class: "legend-item" }, el("i", { class: "unit-swatch" }), el("span", { text: "方块：单位" })),
      el("span", { class: "muted", text: MAP.tiles ? `底图：已配置（${MAP.coords === "gcj02" ? "GCJ-02" : "WGS-84"}）`
                                                  : "底图：未配置，矢量视图" }),
      ...[filterChip()].filter(Boolean));
    const placed = S.buildings.filter((b) => b.lat !== null && b.lon !== null);
    const unplaced = S.buildings.filter((b) => b.lat === null || b.lon === null);
    const unplacedUnits = S.units.filter((u) => u.lat === null || u.lon === null);
    const unplacedBox = document.getElementById("bmap-unplaced");
    const isOn = (kind, id) => S.filter && S.filter.kind === kind && S.filter.id === id;
    unplacedBox.replaceChildren(
      ...(unplaced.length ? [el("span", { class: "muted", text: `未登记坐标的楼栋（${unplaced.length}）：` }),
        ...unplaced.map((b) => el("button", { class: `unplaced sev-${b.worst || "none"} st-${statusOf(b)}`
          + (isOn("building", b.id) ? " selected" : ""), "data-testid": "unplaced-building",
          "data-building": b.id, "data-status": statusOf(b), title: markerTitle(b),
          text: `${b.name}${statusCounts(b) ? " · " + statusCounts(b) : ""}`,
          onclick: () => toggle(buildingFilter(b)) }))] : []),
      ...(unplacedUnits.length ? [el("span", { class: "muted", text: `无坐标的单位（${unplacedUnits.length}）：` }),
        ...unplacedUnits.map((u) => el("button", { class: `unplaced unit st-${statusOf(u)}`
          + (isOn("unit", u.id) ? " selected" : ""), "data-testid": "unplaced-unit", "data-unit": u.id,
          "data-building": u.building_id || "", "data-status": statusOf(u), title: unitTitle(u),
          text: `${u.name}${statusCounts(u) ? " · " + statusCounts(u) : ""}`,
          onclick: () => toggle(unitFilter(u)) }))] : []));
    if (typeof L === "undefined") { canvas.replaceChildren(el("p", { class: "error", text: "地图组件未加载" })); return; }
    if (!S.lmap) {
      canvas.replaceChildren();
      canvas.classList.toggle("vector", !MAP.tiles);
      // the vector view fits the district in quarter steps; tiles stay at whole zoom levels (sharp)
      S.lmap = L.map(canvas, { zoomControl: true, attributionControl: !!MAP.tiles, preferCanvas: false,
                               zoomSnap: MAP.tiles ? 1 : 0.25 });
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
      const st = statusOf(b);
      const selected = isOn("building", b.id);
      const marker = L.circleMarker(pos, { radius: selected ? 12 : 9, color: selected ? "#ffffff" : "#0b111a",
        weight: selected ? 3 : 2, fillColor: STATUS_COLOURS[st], fillOpacity: 0.9 });
      // without tiles the places that need attention keep a short label; every marker tells all on hover
      const labelled = !MAP.tiles && st !== "clear";
      marker.bindTooltip(labelled ? `${b.name} · ${STATUS_LABELS[st]}` : markerTitle(b),
                         { permanent: labelled, direction: "top", offset: [0, -8], className: `tip st-${st}` });
      marker.on("click", () => toggle(buildingFilter(b)));
      marker.addTo(S.layer);
      const node = marker.getElement();
      if (node) {
        node.setAttribute("data-testid", "map-marker");
        node.setAttribute("data-building", b.id);
        node.setAttribute("data-worst", w);
        node.setAttribute("data-status", st);
        node.setAttribute("data-colour", STATUS_COLOURS[st]);
        node.setAttribute("data-lat", String(pos[0]));
        node.setAttribute("data-lon", String(pos[1]));
        if (labelled) {
          const title = document.createElementNS(node.namespaceURI, "title");
          title.textContent = markerTitle(b);
          node.append(title);
        }
      }
    });
    // units at their building's position, as small squares in a row to the right of the building's marker
    const byBuilding = new Map();
    for (const u of S.units) {
      if (u.lat === null || u.lon === null) continue;
      if (!byBuilding.has(u.building_id)) byBuilding.set(u.building_id, []);
      byBuilding.get(u.building_id).push(u);
    }
    let unitMarkers = 0;
    for (const units of byBuilding.values()) {
      units.forEach((u, i) => {
        const pos = mapPosition(u);
        const st = statusOf(u);
        const selected = isOn("unit", u.id);
        const size = selected ? 16 : 12;
        const icon = L.divIcon({ className: `unit-marker st-${st}${selected ? " selected" : ""}`, html: "",
                                 iconSize: [size, size], iconAnchor: [-12 - i * 16, size / 2] });
        const marker = L.marker(pos, { icon, keyboard: true, title: unitTitle(u), riseOnHover: true });
        marker.on("click", () => toggle(unitFilter(u)));
        marker.addTo(S.layer);
        const node = marker.getElement();
        if (node) {
          node.setAttribute("data-testid", "unit-marker");
          node.setAttribute("data-unit", u.id);
          node.setAttribute("data-building", u.building_id || "");
          node.setAttribute("data-status", st);
          node.setAttribute("data-colour", STATUS_COLOURS[st]);
          node.setAttribute("data-lat", String(pos[0]));
          node.setAttribute("data-lon", String(pos[1]));
        }
        unitMarkers += 1;
      });
    }
    canvas.dataset.markers = String(points.length);
    canvas.dataset.unitMarkers = String(unitMarkers);
  }

  // ---------------------------------------------------------------- patrol progress per grid (issue 14)

  async function loadPatrols() {
    const box = document.getElementById("patrols-body");
    if (!box) return;
    const year = districtYear();
    try {
      S.patrols = await GH.get(`/api/v1/kpis/patrols?level=grid&year=${year}`);
      S.patrols.error = null;
    } catch (e) {
      S.patrols = { error: e.status === 403 ? "巡查统计不对该角色开放"
                           : e.status === 404 ? "巡查统计暂不可用" : (e.message || "巡查统计加载失败") };
    }
    renderPatrols();
  }

  const PATROL_FIELDS = [["planned", "计划"], ["done", "已完成"], ["done_on_time", "按期完成"], ["overdue", "逾期"],
                         ["hazards_found", "发现隐患"], ["hazards_rectified", "已整改"]];

  // "沙坡尾社区 一网格": grid names repeat across communities; the map's places say which community a grid is in
  function gridName(r) {
    const place = S.buildings.find((b) => b.grid_id === r.id) || S.units.find((u) => u.grid_id === r.id);
    return place ? `${place.community.name} ${r.name || r.id}` : (r.name || r.id);
  }

  function patrolRow(r, total) {
    const planned = Number(r.planned) || 0, done = Number(r.done) || 0, overdue = Number(r.overdue) || 0;
    const pct = planned ? Math.min(100, Math.round((done / planned) * 100)) : 0;
    const bar = el("div", { class: "pbar", title: `完成 ${done} / 计划 ${planned}` },
      el("span", { class: "pbar-done", "data-pct": String(pct) }));
    bar.firstChild.style.width = `${pct}%`;
    return el("tr", { "data-testid": total ? "patrol-total" : "patrol-row", "data-grid": total ? null : r.id,
                      "data-overdue": String(overdue), class: `${total ? "total-row" : ""}${overdue ? " has-overdue" : ""}` },
      el("td", { class: "pgrid", text: total ? "合计" : gridName(r) }),
      ...PATROL_FIELDS.map(([k]) => el("td", { "data-field": k, text: r[k] === undefined || r[k] === null ? "—" : String(r[k]),
        class: k === "overdue" && overdue ? "overdue-hot" : null })),
      el("td", { class: "pcell" }, bar, el("small", { text: planned ? `${pct}%` : "—" })));
  }

  function renderPatrols() {
    const box = document.getElementById("patrols-body");
    if (!box) return;
    const body = S.patrols;
    if (!body) { box.replaceChildren(el("p", { class: "muted", text: "加载中…" })); return; }
    if (body.error) { box.replaceChildren(el("p", { class: "muted", "data-testid": "patrols-error", text: body.error })); return; }
    const rows = body.rows || [];
    const period = body.month ? `${body.year}年${body.month}月` : `${body.year || districtYear()}年`;
    if (!rows.length) {
      box.replaceChildren(el("p", { class: "muted", "data-testid": "patrols-empty", text: `${period}暂无巡查计划` }));
      return;
    }
    const overdue = Number(body.total && body.total.overdue) || rows.reduce((n, r) => n + (Number(r.overdue) || 0), 0);
    box.replaceChildren(
      el("div", { class: `patrol-summary${overdue ? " has-overdue" : ""}`, "data-testid": "patrols-summary" },
        overdue ? el("span", { class: "badge critical", text: `逾期 ${overdue}` })
                : el("span", { class: "badge ok", text: "无逾期" }),
        el("span", { class: "muted", text: ` ${period} · 计划/已完成/逾期 按网格统计` })),
      el("table", { class: "patrol-table", "data-testid": "patrol-progress", "data-year": String(body.year || "") },
        el("thead", {}, el("tr", {}, el("th", { text: "网格" }), ...PATROL_FIELDS.map(([, t]) => el("th", { text: t })),
          el("th", { text: "完成率" }))),
        el("tbody", {}, ...rows.map((r) => patrolRow(r, false))),
        body.total ? el("tfoot", {}, patrolRow(body.total, true)) : null));
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
    const rows = [...S.alerts.values()].filter(alertMatches).sort((a, b) =>
      GH.SEVERITY_RANK[a.severity] - GH.SEVERITY_RANK[b.severity] || (a.last_seen < b.last_seen ? 1 : -1));
    if (!rows.length) {
      const empty = !S.filter ? "暂无活动告警" : S.filter.building ? "所在楼栋暂无活动告警" : "该单位未登记楼栋，无设备告警";
      box.replaceChildren(...[filterChip(), el("p", { class: "muted", text: empty })].filter(Boolean));
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

  function unitName(t) {
    if (t.patrol && t.patrol.unit_name) return t.patrol.unit_name;
    const id = taskUnit(t);
    const unit = id && S.units.find((u) => u.id === id);
    return unit ? unit.name : id || "";
  }

  function taskCard(t) {
    const due = GH.dueOf(t);
    const cd = GH.countdown(due);
    const loc = t.location || {};
    const where = [loc.building, loc.floor !== null && loc.floor !== undefined ? `${loc.floor}层` : "", loc.place]
      .filter(Boolean).join(" ");
    return el("div", { class: `task ${t.severity}`, "data-testid": "task-card", "data-task-id": t.id, "data-state": t.state },
      el("div", {}, el("span", { class: `badge ${t.severity}`, text: label("severity", t.severity) }),
        el("b", { text: typeLabel(t.type) }), t.count > 1 ? el("span", { class: "muted", text: ` ×${t.count}` }) : null,
        t.patrol && t.patrol.overdue ? el("span", { class: "badge overdue", "data-testid": "patrol-overdue",
                                                    text: "巡查逾期" }) : null,
        t.escalation_level > 0 ? el("span", { class: "badge esc", "data-testid": "escalated",
                                              text: ` 已升级 L${t.escalation_level}` }) : null),
      el("div", { class: "muted", text: [loc.grid || t.grid_id, where || t.device_id, unitName(t)].filter(Boolean)
        .join(" · ") }),
      el("div", { class: "muted", text: `负责人：${t.assignee_name || t.assignee || "未指派"}` }),
      due ? el("div", { class: `due${cd.late ? " late" : ""}`, "data-due": due,
                        "data-prefix": t.state === "open" ? "接单" : "办结",
                        text: `${t.state === "open" ? "接单" : "办结"}${cd.text}` })
          : el("div", { class: "muted", text: t.resolution ? `办结：${resolutionLabel(t.resolution)}` : "" }));
  }

  function renderTasks() {
    const box = document.getElementById("tasks-body");
    if (!box) return;
    const tasks = [...S.tasks.values()].filter(taskMatches).sort((a, b) => GH.SEVERITY_RANK[a.severity] - GH.SEVERITY_RANK[b.severity]
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

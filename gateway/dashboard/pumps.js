// Pump room per site: pumps (run, fault, mode), outlet pressure trend with the low-pressure
// thresholds (0.25 MPa opens the hazard, 0.28 MPa clears it: fire-pump-cabinet profile), tank level,
// power supplies, and every device's last seen with offline marks. Refreshed by the stream's beat.

import { lineChart } from "./chart.js";
import { t, pick } from "./i18n.js";
import { codeBadge, fmtAgo, fmtValue, h, icon, ms } from "./util.js";

const LOW_MPA = 0.25;
const CLEAR_MPA = 0.28;
const TREND_MS = 10 * 60_000;
let root = null;
let site = "";
let data = null;
let trends = {};
let loading = false;
let pending = false;

export function mount(el, ctx) {
  root = el;
  root.replaceChildren(
    h("div", { class: "pump-head" },
      h("label", { class: "field" }, h("span", {}, t("pump_site")),
        h("select", { dataset: { testid: "pump-site-select" }, onchange: (e) => ctx.go(`#/pumps/${encodeURIComponent(e.target.value)}`) })),
      h("div", { class: "pump-site-info" })),
    h("div", { class: "pump-body", dataset: { testid: "pump-room" } }),
  );
}

async function pumpSites(ctx) {
  if (!ctx.state.pumpSiteIds) {
    try {
      const devs = await ctx.get("/api/v1/devices");
      ctx.state.pumpSiteIds = [...new Set(devs.filter((d) => d.kind === "fire_pump_cabinet").map((d) => d.site_id))];
    } catch {
      return [];
    }
  }
  return ctx.state.pumpSiteIds;
}

export async function update(ctx, reason, ev) {
  if (!root) return;
  const ids = await pumpSites(ctx);
  const sel = root.querySelector("[data-testid=pump-site-select]");
  const want = ids.join("|");
  if (sel.dataset.options !== want) {
    sel.replaceChildren(...ids.map((id) => h("option", { value: id }, `${ctx.siteName(id)} (${id})`)));
    sel.dataset.options = want;
  }
  if (reason === "route") {
    site = ctx.state.param || site || ids[0] || "";
    if (site && !ctx.state.param) history.replaceState(null, "", `#/pumps/${encodeURIComponent(site)}`);
    data = data && data.site_id === site ? data : null;
  }
  sel.value = site;
  if (!site) {
    root.querySelector("[data-testid=pump-room]").replaceChildren(h("p", { class: "empty" }, t("pump_none")));
    return;
  }
  const relevant = reason === "route" || reason === "beat" || reason === "data" ||
    (reason === "transition" && ev?.[ev.kind]?.site_id === site);
  if (!relevant && data) return render(ctx);
  await load(ctx);
}

async function load(ctx) {
  if (loading) {
    pending = true;
    return;
  }
  loading = true;
  try {
    const want = site;
    const d = await ctx.get(`/api/v1/sites/${encodeURIComponent(want)}`);
    const since = new Date(Date.now() - TREND_MS).toISOString();
    const next = {};
    await Promise.all(d.devices.map(async (dev) => {
      const metric = dev.kind === "fire_pump_cabinet" ? "outlet_pressure" : dev.kind === "fire_water_tank" ? "level" : null;
      if (!metric) return;
      const q = new URLSearchParams({ device: dev.device_id, metric, since, limit: "5000" });
      try {
        next[dev.device_id] = await ctx.get(`/api/v1/readings?${q}`);
      } catch {
        next[dev.device_id] = [];
      }
    }));
    if (want === site) {
      data = d;
      trends = next;
      render(ctx);
    }
  } catch {
    root.querySelector("[data-testid=pump-room]").replaceChildren(h("p", { class: "empty" }, t("error_load")));
  } finally {
    loading = false;
    if (pending) {
      pending = false;
      load(ctx);
    }
  }
}

const val = (dev, point) => dev.latest?.[point]?.value;

function lamp(on, kind, label, testid, value) {
  return h("span", { class: `lamp ${on ? kind : "off"}`, dataset: { testid, value } }, h("i", { "aria-hidden": "true" }), label);
}

function supply(v, label, testid) {
  const cls = v === true ? "ok" : v === false ? "bad" : "off";
  return h("span", { class: `lamp ${cls}`, dataset: { testid, value: String(v) } }, h("i", { "aria-hidden": "true" }),
    `${label} ${v === false ? t("lost") : v === true ? t("present") : "—"}`);
}

function pumpTile(dev, prefix, name) {
  const run = val(dev, `${prefix}_run`);
  const fault = val(dev, `${prefix}_fault`) || val(dev, `${prefix}_start_failure`);
  const mode = val(dev, `${prefix}_mode`);
  const modeCls = mode === 1 ? "ok" : mode === 0 ? "warn" : mode === 2 ? "bad" : "unknown";
  return h("div", { class: `pump ${run ? "running" : ""} ${fault ? "faulted" : ""}`, dataset: { testid: `pump-${prefix}-${dev.device_id}` } },
    h("div", { class: "pump-name" }, t(name)),
    h("div", { class: "pump-icon", "aria-hidden": "true" }, pumpSvg(run)),
    lamp(run, "ok", run ? t("running") : t("stopped"), `${prefix}_run-${dev.device_id}`, String(Boolean(run))),
    lamp(fault, "bad", fault ? t("fault") : t("normal"), `${prefix}_fault-${dev.device_id}`, String(Boolean(fault))),
    h("div", { class: `mode mode-${modeCls}`, dataset: { testid: `${prefix}_mode-${dev.device_id}`, value: mode ?? "" } },
      h("span", { class: "k" }, t("mode")), " ", mode === undefined || mode === null ? "—" : t(`mode_${mode}`)),
  );
}

function pumpSvg(running) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 40 40");
  svg.setAttribute("class", running ? "spin" : "");
  svg.innerHTML = '<circle cx="20" cy="20" r="17" fill="none" stroke="currentColor" stroke-width="2.5"/>' +
    '<path d="M20 20 L20 6 A14 14 0 0 1 32 13 Z M20 20 L32 27 A14 14 0 0 1 20 34 Z M20 20 L8 27 A14 14 0 0 1 8 13 Z" fill="currentColor" opacity=".8"/>';
  return svg;
}

function statusMark(dev) {
  return h("span", { class: `dev-status st-${dev.status}`, dataset: { testid: `status-${dev.device_id}`, status: dev.status } },
    h("span", { class: `status-dot st-${dev.status}`, "aria-hidden": "true" }),
    t(`status_${dev.status}`), h("span", { class: "muted" }, ` · ${t("last_seen")} ${fmtAgo(dev.last_seen)}`));
}

function cabinetCard(dev) {
  const p = val(dev, "outlet_pressure");
  const trend = (trends[dev.device_id] || []).map((r) => ({ t: ms(r.ts), v: r.value }));
  const pCls = typeof p !== "number" ? "" : p < LOW_MPA ? "bad" : p < CLEAR_MPA ? "warn" : "ok";
  const mainPower = val(dev, "main_power");
  const backup = val(dev, "backup_power");
  const phase = val(dev, "phase_loss");
  const sw = val(dev, "pressure_switch");
  const cur = (k) => fmtValue(val(dev, k), "A");
  return h("section", { class: `card cabinet ${dev.status !== "online" ? "is-offline" : ""}`, dataset: { testid: `cabinet-${dev.device_id}` },
    "aria-label": `${pick(dev, "title")} ${dev.device_id}` },
  h("header", { class: "card-head" },
    h("div", {}, h("h3", {}, pick(dev, "title"), " ", h("code", {}, dev.device_id)),
      h("div", { class: "muted small" }, [dev.location?.building, dev.location?.floor, dev.location?.room].filter(Boolean).join(" · "))),
    statusMark(dev)),
  h("div", { class: "cabinet-grid" },
    h("div", { class: "pumps" }, pumpTile(dev, "pump1", "pump1"), pumpTile(dev, "pump2", "pump2"), pumpTile(dev, "jockey", "jockey")),
    h("div", { class: "gauges" },
      h("div", { class: `big-value ${pCls}`, dataset: { testid: `outlet-pressure-${dev.device_id}` } },
        h("span", { class: "k" }, t("outlet_pressure")),
        h("span", { class: "v" }, typeof p === "number" ? p.toFixed(3) : "—", h("small", {}, " MPa"))),
      h("div", { class: "power" },
        h("div", { class: "k" }, t("power")),
        supply(mainPower, t("main_power"), `main_power-${dev.device_id}`),
        supply(backup, t("backup_power"), `backup_power-${dev.device_id}`),
        lamp(phase, "bad", `${t("phase_loss")} ${phase ? t("yes") : t("no")}`, `phase_loss-${dev.device_id}`, String(phase)),
        lamp(sw, "warn", `${t("pressure_switch")} ${sw ? t("yes") : t("no")}`, `pressure_switch-${dev.device_id}`, String(sw))),
      h("div", { class: "currents" }, h("span", { class: "k" }, t("currents")),
        h("span", {}, `1#: ${cur("pump1_current_l1")}`), h("span", {}, `2#: ${cur("pump2_current_l1")}`),
        h("span", {}, `${t("jockey")}: ${cur("jockey_current")}`)),
    ),
    h("figure", { class: "chart-box trend" },
      h("figcaption", {}, t("pressure_trend"),
        h("span", { class: "legend" }, h("i", { class: "lg-low" }), t("threshold_low"), h("i", { class: "lg-clear" }), t("threshold_clear"))),
      lineChart({ points: trend, unit: "MPa", width: 640, height: 190, testid: `pressure-chart-${dev.device_id}`,
        label: t("pressure_trend"), tMin: Date.now() - TREND_MS, tMax: Date.now(), extendToEnd: true,
        yMin: 0, yMax: Math.max(0.8, ...trend.map((q) => q.v + 0.05)),
        thresholds: [{ value: LOW_MPA, label: t("threshold_low"), kind: "low" }, { value: CLEAR_MPA, label: t("threshold_clear"), kind: "clear" }] }),
    ),
  ));
}

function tankCard(dev) {
  const level = val(dev, "level");
  const hi = val(dev, "high_level_setpoint") ?? 5;
  const lo = val(dev, "low_level_setpoint");
  const pct = typeof level === "number" ? Math.max(0, Math.min(100, (level / (hi || 5)) * 100)) : 0;
  const trend = (trends[dev.device_id] || []).map((r) => ({ t: ms(r.ts), v: r.value }));
  const low = val(dev, "low_level_alarm");
  return h("section", { class: `card tank ${dev.status !== "online" ? "is-offline" : ""}`, dataset: { testid: `tank-${dev.device_id}` } },
    h("header", { class: "card-head" }, h("h3", {}, t("tank"), " ", h("code", {}, dev.device_id)), statusMark(dev)),
    h("div", { class: "tank-body" },
      h("div", { class: `tank-gauge ${low ? "bad" : ""}`, role: "meter", "aria-valuemin": "0", "aria-valuemax": String(hi),
        "aria-valuenow": typeof level === "number" ? String(level) : null, "aria-label": t("tank_level") },
      h("div", { class: "tank-fill", style: `height:${pct.toFixed(0)}%` })),
      h("div", {},
        h("div", { class: "big-value", dataset: { testid: `tank-level-${dev.device_id}` } }, h("span", { class: "k" }, t("tank_level")),
          h("span", { class: "v" }, typeof level === "number" ? level.toFixed(2) : "—", h("small", {}, " m"))),
        h("div", { class: "muted small" }, lo !== undefined ? `low ${fmtValue(lo, "m")} · ` : "", `high ${fmtValue(hi, "m")}`),
        lineChart({ points: trend, unit: "m", width: 300, height: 110, tMin: Date.now() - TREND_MS, tMax: Date.now(), extendToEnd: true,
          yMin: 0, yMax: Math.max(hi, ...trend.map((q) => q.v)) + 0.2, label: t("tank_level") }))),
  );
}

function render(ctx) {
  const body = root.querySelector("[data-testid=pump-room]");
  const info = root.querySelector(".pump-site-info");
  if (!data) {
    body.replaceChildren(h("p", { class: "empty" }, t("loading")));
    return;
  }
  info.replaceChildren(codeBadge(data.code, `pump-site-code-${data.site_id}`), h("span", {}, pick(data, "reason")),
    h("span", { class: "muted" }, ` · ${data.station || ""}`));
  const cabinets = data.devices.filter((d) => d.kind === "fire_pump_cabinet");
  const tanks = data.devices.filter((d) => d.kind === "fire_water_tank");
  body.replaceChildren(
    ...(cabinets.length ? cabinets.map(cabinetCard) : [h("p", { class: "empty" }, t("pump_none"))]),
    h("div", { class: "pump-bottom" },
      ...tanks.map(tankCard),
      h("section", { class: "card devices-card" },
        h("header", { class: "card-head" }, h("h3", {}, t("devices"))),
        h("table", { class: "grid compact", dataset: { testid: "pump-devices" } },
          h("thead", {}, h("tr", {}, h("th", {}, t("col_device")), h("th", {}, t("col_title")), h("th", {}, t("col_status")), h("th", {}, t("last_seen")))),
          h("tbody", {}, ...data.devices.map((d) => h("tr", { class: d.status !== "online" ? "offline" : "", dataset: { testid: `pump-device-${d.device_id}`, status: d.status } },
            h("td", {}, h("code", {}, d.device_id)), h("td", {}, pick(d, "title")),
            h("td", {}, h("span", { class: `status-dot st-${d.status}`, "aria-hidden": "true" }), t(`status_${d.status}`), d.status !== "online" ? icon("warn", "offline-mark", t("status_unreachable")) : null),
            h("td", { title: d.last_seen || "" }, fmtAgo(d.last_seen)))))))),
  );
}

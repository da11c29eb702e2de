// Hazards: the live list (refreshed by the stream) and one hazard's detail with its evidence chart,
// transition trail and the actions valid for its state (operators only).

import { lineChart } from "./chart.js";
import { t, pick } from "./i18n.js";
import { fmtAgo, fmtDateTime, h, ms, sevChip } from "./util.js";

const SEV_RANK = { critical: 0, major: 1, minor: 2, info: 3 };
const filter = { open: true, severity: "", site: "" };
let root = null;
let all = null; // hazards when "all" is chosen (the open ones live in ctx.state.hazards)
let selected = "";
let detail = null;
let readings = null;
let busy = false;

/** What a person may do from this state (mirrors gateway/hazards/lifecycle.py). */
export function actionsFor(hz) {
  const out = {
    proposed: ["confirm", "reject"],
    confirmed: ["dispatch", "start"],
    dispatched: ["start", "rectified"],
    rectifying: ["rectified"],
    rectified: ["close"],
  }[hz.state] || [];
  // once the condition has ended, a re-check may close it from any open state
  if (!hz.active && hz.state !== "closed" && !out.includes("close")) out.push("close");
  return out;
}

export function mount(el, ctx) {
  root = el;
  root.replaceChildren(
    h("div", { class: "split" },
      h("div", { class: "pane list-pane" },
        h("div", { class: "filters" },
          h("div", { class: "seg", role: "group" },
            h("button", { type: "button", "aria-pressed": String(filter.open), dataset: { testid: "hz-open-only" },
              onclick: () => { filter.open = true; all = null; update(ctx, "filter"); } }, t("hz_open_only")),
            h("button", { type: "button", "aria-pressed": String(!filter.open), dataset: { testid: "hz-all" },
              onclick: () => { filter.open = false; update(ctx, "filter"); } }, t("hz_all"))),
          h("label", { class: "field" }, h("span", {}, t("hz_severity")),
            h("select", { dataset: { testid: "hz-filter-severity" }, onchange: (e) => { filter.severity = e.target.value; renderList(ctx); } },
              h("option", { value: "" }, t("filter_all")),
              ...Object.keys(SEV_RANK).map((s) => h("option", { value: s }, t(`sev_${s}`))))),
          h("label", { class: "field" }, h("span", {}, t("hz_site")),
            h("select", { dataset: { testid: "hz-filter-site", key: "site" }, onchange: (e) => { filter.site = e.target.value; renderList(ctx); } })),
        ),
        h("div", { class: "list", role: "list", dataset: { testid: "hazard-list" } }),
      ),
      h("div", { class: "pane detail-pane", dataset: { testid: "hazard-detail-pane" } }),
    ),
  );
  root.querySelector("[data-testid=hz-filter-severity]").value = filter.severity;
}

export async function update(ctx, reason, data) {
  if (!root) return;
  if (reason === "route" && ctx.state.param !== selected) {
    selected = ctx.state.param;
    detail = null;
    readings = null;
  }
  if (!filter.open && (all === null || reason !== "beat")) {
    try {
      all = await ctx.get("/api/v1/hazards?limit=500");
    } catch {
      all = [];
    }
  }
  renderList(ctx);
  const mine = data && data.kind === "hazard" && data.subject_id === selected;
  if (selected && (reason === "route" || mine || !detail || reason === "acted")) await loadDetail(ctx);
  else renderDetail(ctx);
}

function rows(ctx) {
  const list = filter.open ? ctx.state.hazards : all || [];
  return list
    .filter((hz) => (!filter.severity || hz.severity === filter.severity) && (!filter.site || hz.site_id === filter.site))
    .sort((a, b) => (a.state === "closed") - (b.state === "closed") || SEV_RANK[a.severity] - SEV_RANK[b.severity] ||
      ms(b.opened_at) - ms(a.opened_at));
}

function renderList(ctx) {
  for (const b of root.querySelectorAll(".seg button")) {
    b.setAttribute("aria-pressed", String((b.dataset.testid === "hz-open-only") === filter.open));
  }
  const siteSel = root.querySelector("[data-key=site]");
  const siteIds = [...new Set((filter.open ? ctx.state.hazards : all || []).map((x) => x.site_id))].sort();
  const want = ["", ...siteIds].join("|");
  if (siteSel.dataset.options !== want) {
    siteSel.replaceChildren(h("option", { value: "" }, t("filter_all")),
      ...siteIds.map((id) => h("option", { value: id }, ctx.siteName(id))));
    siteSel.dataset.options = want;
  }
  siteSel.value = siteIds.includes(filter.site) ? filter.site : "";
  filter.site = siteSel.value;

  const list = root.querySelector("[data-testid=hazard-list]");
  const items = rows(ctx);
  list.replaceChildren(...items.map((hz) => h("div", {
    role: "listitem", tabindex: "0",
    class: `hz-row sev-border-${hz.severity} ${hz.hazard_id === selected ? "selected" : ""} ${hz.active ? "" : "inactive"}`,
    dataset: { testid: "hazard-row", hazardId: hz.hazard_id, site: hz.site_id, device: hz.device_id, rule: hz.rule,
      state: hz.state, active: String(Boolean(hz.active)) },
    "aria-current": hz.hazard_id === selected ? "true" : null,
    onclick: () => ctx.go(`#/hazards/${encodeURIComponent(hz.hazard_id)}`),
    onkeydown: (e) => { if (e.key === "Enter") ctx.go(`#/hazards/${encodeURIComponent(hz.hazard_id)}`); },
  },
  h("div", { class: "hz-top" }, sevChip(hz.severity), h("span", { class: "hz-title" }, pick(hz, "title"))),
  h("div", { class: "hz-meta" },
    h("span", { class: `state st-${hz.state}` }, t(`hz_state_${hz.state}`)),
    h("span", { class: `live ${hz.active ? "on" : "off"}` }, hz.active ? t("hz_active") : t("hz_cleared")),
    h("span", { class: "muted" }, ctx.siteName(hz.site_id)),
    h("span", { class: "muted" }, hz.device_id),
    h("span", { class: "muted right" }, fmtAgo(hz.opened_at))),
  )));
  if (!items.length) list.append(h("p", { class: "empty" }, t("hz_none")));
}

async function loadDetail(ctx) {
  const want = selected;
  try {
    const d = await ctx.get(`/api/v1/hazards/${encodeURIComponent(want)}`);
    if (want !== selected) return;
    detail = d;
    renderDetail(ctx);
    readings = await evidenceReadings(ctx, d);
    if (want === selected) renderDetail(ctx);
  } catch {
    if (want === selected) {
      detail = null;
      renderDetail(ctx, true);
    }
  }
}

async function evidenceReadings(ctx, hz) {
  const ev = (hz.evidence || [])[0];
  if (!ev || !ev.metric) return [];
  const from = (ms(hz.opened_at) ?? Date.now()) - 5 * 60_000;
  const until = ms(hz.closed_at) ?? Date.now();
  const q = new URLSearchParams({ device: ev.device_id || hz.device_id, metric: ev.metric, since: new Date(from).toISOString(),
    until: new Date(until + 1000).toISOString(), limit: "2000" });
  try {
    return await ctx.get(`/api/v1/readings?${q}`);
  } catch {
    return [];
  }
}

const num = (v) => (typeof v === "boolean" ? Number(v) : typeof v === "number" ? v : NaN);

/** y-axis labels of a state chart: modes as manual/auto/stop, booleans as yes/no, other integers as numbers. */
function stateLabel(metric, isBool) {
  return (v) => {
    const n = Math.round(v * 100) / 100;
    if (!Number.isInteger(n)) return "";
    if (metric.endsWith("_mode") && n >= 0 && n <= 2) return t(`mode_${n}`);
    if (isBool && (n === 0 || n === 1)) return n ? t("yes") : t("no");
    return String(n);
  };
}

function evidenceChart(hz) {
  const ev = hz.evidence || [];
  const metric = ev[0]?.metric || "";
  const pts = (readings || []).map((r) => ({ t: ms(r.ts), v: num(r.value) })).filter((p) => Number.isFinite(p.v));
  const marks = ev.map((e) => ({ t: e.ts_ms ?? ms(e.ts), v: num(e.value) })).filter((p) => Number.isFinite(p.v));
  const sample = [...pts, ...marks];
  const step = sample.length > 0 && sample.every((p) => Number.isInteger(p.v)) ;
  const unit = (readings || []).find((r) => r.unit)?.unit || "";
  const thresholds = metric === "outlet_pressure"
    ? [{ value: 0.25, label: "0.25", kind: "low" }, { value: 0.28, label: "0.28", kind: "clear" }] : [];
  const end = ms(hz.closed_at) ?? Date.now();
  return h("figure", { class: "chart-box" },
    h("figcaption", {}, t("hz_evidence"), " · ", h("code", {}, metric), unit ? ` (${unit})` : "",
      pts.length ? "" : h("span", { class: "muted" }, ` · ${t("hz_no_readings")}`)),
    lineChart({ points: pts, marks, thresholds, step, unit, width: 620, height: 170, testid: "evidence-chart",
      label: `${t("hz_evidence")} ${metric}`, tMax: Math.max(end, ...sample.map((p) => p.t)),
      yMin: step ? Math.min(0, ...sample.map((p) => p.v)) - 0.3 : undefined,
      yMax: step ? Math.max(1, ...sample.map((p) => p.v)) + 0.3 : undefined,
      yFormat: step ? stateLabel(metric, (readings || []).some((r) => typeof r.value === "boolean")) : undefined }),
  );
}

function renderDetail(ctx, failed = false) {
  const pane = root.querySelector("[data-testid=hazard-detail-pane]");
  if (!selected) {
    pane.replaceChildren(h("p", { class: "empty" }, t("hz_pick")));
    return;
  }
  if (!detail || detail.hazard_id !== selected) {
    pane.replaceChildren(h("p", { class: "empty" }, failed ? t("error_load") : t("loading")));
    return;
  }
  const hz = detail;
  const acts = ctx.state.canOperate ? actionsFor(hz) : [];
  const meta = [
    ["hz_site", `${ctx.siteName(hz.site_id)} (${hz.site_id})`],
    ["hz_device", hz.device_id],
    ["hz_rule", hz.rule],
    ["hz_class", hz.class || hz.hazard_class],
    ["hz_tier", t(`tier_${hz.tier}`)],
    ["hz_opened", fmtDateTime(hz.opened_at)],
    ["hz_last_seen", fmtDateTime(hz.last_seen)],
    ["hz_deadline", hz.deadline ? fmtDateTime(hz.deadline) : "—"],
    ["hz_count", String(hz.count)],
    ["hz_assignee", hz.assignee || "—"],
  ];
  pane.replaceChildren(h("article", {
    class: "hz-detail", dataset: { testid: "hazard-detail", hazardId: hz.hazard_id, state: hz.state, rule: hz.rule, active: String(hz.active) },
    "aria-labelledby": "hz-detail-title",
  },
  h("header", { class: "hz-detail-head" },
    h("div", {},
      h("h2", { id: "hz-detail-title" }, pick(hz, "title")),
      h("div", { class: "chips" }, sevChip(hz.severity),
        h("span", { class: `state st-${hz.state}`, dataset: { testid: "hazard-state" } }, t(`hz_state_${hz.state}`)),
        h("span", { class: `live ${hz.active ? "on" : "off"}` }, hz.active ? t("hz_active") : t("hz_cleared")),
        hz.hard ? h("span", { class: "tag" }, t("hz_hard")) : null,
        hz.overdue ? h("span", { class: "tag bad" }, t("overdue")) : null)),
    acts.length ? h("div", { class: "actions", dataset: { operator: "" }, role: "group", "aria-label": t("hz_actions") },
      ...acts.map((a) => h("button", {
        type: "button", class: `btn ${a === "close" || a === "confirm" ? "primary" : a === "reject" ? "danger" : ""}`,
        dataset: { testid: `act-${a}` }, disabled: busy,
        onclick: () => runAction(ctx, hz, a),
      }, t(`act_${a}`)))) : null,
  ),
  h("dl", { class: "meta cols" }, ...meta.flatMap(([k, v]) => [h("dt", {}, t(k)), h("dd", {}, v)])),
  evidenceChart(hz),
  h("section", { class: "trail" },
    h("h3", {}, t("hz_trail")),
    h("ol", { class: "timeline" }, ...(hz.trail || []).map((tr) => h("li", { dataset: { testid: "trail-item", type: tr.type } },
      h("span", { class: `tl-dot ev-${tr.type}`, "aria-hidden": "true" }),
      h("div", {},
        h("div", {}, h("b", {}, t(`ev_${tr.type}`)), " · ", tr.actor === "system" ? t("system") : tr.actor,
          h("span", { class: "muted small" }, ` ${fmtDateTime(tr.at)}`)),
        tr.note ? h("div", { class: "tl-note" }, tr.note) : null)))),
  ),
  ));
}

async function runAction(ctx, hz, action) {
  let body = { note: "" };
  if (action === "close" || action === "reject") {
    const got = await ctx.askNote({ title: t(`note_title_${action}`), subject: pick(hz, "title"), required: true });
    if (!got) return;
    body = { note: got.note };
  }
  busy = true;
  renderDetail(ctx);
  const subject = await ctx.act("hazard", hz.hazard_id, action, body);
  busy = false;
  if (subject && subject.hazard_id === selected) {
    detail = subject;
    if (!filter.open && all) all = all.map((x) => (x.hazard_id === subject.hazard_id ? subject : x));
  }
  renderList(ctx);
  renderDetail(ctx);
}

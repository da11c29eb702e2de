// Site board: every site's red / yellow / green code, open hazards by severity, next inspection due;
// filters by town, grid cell and domain; a side panel with one site's hazards and devices.

import { t, pick } from "./i18n.js";
import { codeBadge, fill, fmtAgo, fmtDate, h, icon, ms, sevChip } from "./util.js";

const SEVERITIES = ["critical", "major", "minor", "info"];
const filters = { town: "", grid_cell: "", domain: "", code: "", q: "" };
let root = null;
let selected = "";
let detail = null;

export function mount(el, ctx) {
  root = el;
  const select = (key, label) =>
    h("label", { class: "field" }, h("span", {}, label),
      h("select", { dataset: { testid: `filter-${key}`, key }, onchange: (e) => { filters[key] = e.target.value; render(ctx); } }));
  root.replaceChildren(
    h("div", { class: "board-head" },
      h("div", { class: "code-summary", dataset: { testid: "code-summary" } }),
      h("div", { class: "filters" },
        select("town", t("filter_town")),
        select("grid_cell", t("filter_grid")),
        select("domain", t("filter_domain")),
        h("label", { class: "field grow" }, h("span", { class: "sr-only" }, t("filter_search")),
          h("input", { type: "search", placeholder: t("filter_search"), value: filters.q, dataset: { testid: "filter-search" },
            oninput: (e) => { filters.q = e.target.value.trim().toLowerCase(); render(ctx); } })),
      ),
    ),
    h("div", { class: "board-body" },
      h("div", { class: "table-wrap" },
        h("table", { class: "grid sites", dataset: { testid: "site-table" } },
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, t("col_code")),
            h("th", { scope: "col" }, t("col_site")),
            h("th", { scope: "col" }, t("col_town")),
            h("th", { scope: "col" }, t("col_domain")),
            h("th", { scope: "col", class: "num" }, t("col_hazards")),
            h("th", { scope: "col", class: "num" }, t("col_proposed")),
            h("th", { scope: "col" }, t("col_inspection")),
            h("th", { scope: "col", class: "reason" }, t("col_reason")),
          )),
          h("tbody", {}),
        ),
      ),
      h("aside", { class: "side-panel", dataset: { testid: "site-detail" }, hidden: true }),
    ),
  );
}

export function update(ctx, reason, data) {
  if (reason === "route") {
    selected = ctx.state.param || "";
    detail = null;
  }
  render(ctx);
  if (selected && (reason === "route" || reason === "data" || (reason === "transition" && data?.[data.kind]?.site_id === selected))) {
    loadDetail(ctx);
  }
}

function options(sel, values, labelOf) {
  const cur = sel.value;
  const key = values.join("|");
  if (sel.dataset.options !== key) { // rebuilding an unchanged select would close it under the user's pointer
    sel.replaceChildren(h("option", { value: "" }, t("filter_all")),
      ...values.map((v) => h("option", { value: v }, labelOf ? labelOf(v) : v)));
    sel.dataset.options = key;
  }
  sel.value = values.includes(cur) ? cur : "";
}

function matches(s) {
  if (filters.town && s.town !== filters.town) return false;
  if (filters.grid_cell && s.grid_cell !== filters.grid_cell) return false;
  if (filters.domain && s.domain !== filters.domain) return false;
  if (filters.code && s.code !== filters.code) return false;
  if (filters.q && !`${s.name} ${s.site_id} ${s.enterprise || ""} ${s.station || ""}`.toLowerCase().includes(filters.q)) return false;
  return true;
}

const domainLabel = (d) => (t(`domain_${d}`) === `domain_${d}` ? d : t(`domain_${d}`));
const RANK = { red: 0, yellow: 1, green: 2 };

function render(ctx) {
  if (!root) return;
  const sites = ctx.state.sites;
  const uniq = (key, within) => [...new Set(within.map((s) => s[key]).filter(Boolean))].sort();
  options(root.querySelector("[data-key=town]"), uniq("town", sites));
  const inTown = filters.town ? sites.filter((s) => s.town === filters.town) : sites;
  options(root.querySelector("[data-key=grid_cell]"), uniq("grid_cell", inTown));
  options(root.querySelector("[data-key=domain]"), uniq("domain", sites), domainLabel);
  for (const k of ["town", "grid_cell", "domain"]) filters[k] = root.querySelector(`[data-key=${k}]`).value;

  const shown = sites.filter(matches).sort((a, b) =>
    RANK[a.code] - RANK[b.code] || b.fire_events_open - a.fire_events_open || b.hazards_open - a.hazards_open ||
    a.site_id.localeCompare(b.site_id));

  // code summary tiles (click to filter by code)
  const base = sites.filter((s) => { const c = filters.code; filters.code = ""; const ok = matches(s); filters.code = c; return ok; });
  const summary = root.querySelector("[data-testid=code-summary]");
  summary.replaceChildren(
    ...["red", "yellow", "green"].map((code) => h("button", {
      type: "button", class: `code-tile tile-${code}`, "aria-pressed": String(filters.code === code),
      dataset: { testid: `code-count-${code}` },
      onclick: () => { filters.code = filters.code === code ? "" : code; render(ctx); },
    }, h("span", { class: "tile-n" }, base.filter((s) => s.code === code).length),
    h("span", { class: "tile-label" }, t(`code_${code}`), h("small", {}, t(`code_${code}_long`))))),
    h("div", { class: "tile-total" }, h("b", {}, shown.length), ` / ${sites.length} ${t("sites_count")}`),
  );

  const now = Date.now();
  const body = root.querySelector("tbody");
  body.replaceChildren(...shown.map((s) => {
    const due = ms(s.next_inspection_due);
    const days = due === null ? null : Math.floor((due - now) / 86_400_000);
    return h("tr", {
      class: `site-row ${s.site_id === selected ? "selected" : ""} ${s.fire_events_open ? "on-fire" : ""}`,
      tabindex: "0", dataset: { testid: `site-row-${s.site_id}`, code: s.code },
      onclick: () => ctx.go(`#/sites/${encodeURIComponent(s.site_id)}`),
      onkeydown: (e) => { if (e.key === "Enter") ctx.go(`#/sites/${encodeURIComponent(s.site_id)}`); },
    },
    h("td", {}, codeBadge(s.code, `site-code-${s.site_id}`), s.overridden ? h("span", { class: "tag" }, t("overridden")) : null),
    h("td", {}, h("div", { class: "site-name" }, s.fire_events_open ? icon("flame", "fire-dot", t("fire")) : null, s.name),
      h("div", { class: "muted small" }, s.site_id, s.station ? ` · ${s.station}` : "")),
    h("td", {}, s.town || "—", h("div", { class: "muted small" }, s.grid_cell || "")),
    h("td", {}, domainLabel(s.domain)),
    h("td", { class: "num" }, h("div", { class: "sev-counts", dataset: { testid: `site-hazards-${s.site_id}` } },
      ...SEVERITIES.map((sev) => h("span", {
        class: `sev-count sev-${sev} ${s.hazards_by_severity?.[sev] ? "" : "zero"}`,
        title: t(`sev_${sev}`),
      }, s.hazards_by_severity?.[sev] ?? 0)))),
    h("td", { class: "num" }, s.hazards_proposed || h("span", { class: "muted" }, "0")),
    h("td", { class: days !== null && days < 0 ? "overdue" : "" }, fmtDate(s.next_inspection_due),
      h("div", { class: "muted small" }, days === null ? "" : days < 0 ? t("overdue") : days === 0 ? t("today") : t("in_days", { n: days }),
        ` · ${t(`cadence_${s.inspection_cadence}`)}`)),
    h("td", { class: "reason" }, pick(s, "reason")),
    );
  }));
  if (!shown.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "empty" }, t("no_sites"))));
  renderDetail(ctx);
}

async function loadDetail(ctx) {
  const want = selected;
  try {
    const d = await ctx.get(`/api/v1/sites/${encodeURIComponent(want)}`);
    if (want === selected) {
      detail = d;
      renderDetail(ctx);
    }
  } catch {
    detail = null;
  }
}

function renderDetail(ctx) {
  const panel = root.querySelector("[data-testid=site-detail]");
  if (!selected) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  const s = detail && detail.site_id === selected ? detail : ctx.state.sites.find((x) => x.site_id === selected);
  if (!s) {
    panel.replaceChildren(h("p", { class: "muted" }, t("loading")));
    return;
  }
  const hasPumps = (s.devices || []).some((d) => d.kind === "fire_pump_cabinet");
  fill(panel,
    h("div", { class: "panel-head" },
      h("h2", {}, s.name),
      h("button", { type: "button", class: "icon-btn", "aria-label": "close", onclick: () => ctx.go("#/sites") }, "✕")),
    h("div", { class: "panel-code" }, codeBadge(s.code, "site-detail-code"), h("span", {}, pick(s, "reason"))),
    h("dl", { class: "meta" },
      h("dt", {}, t("site_enterprise")), h("dd", {}, s.enterprise || "—"),
      h("dt", {}, t("site_address")), h("dd", {}, s.address || "—"),
      h("dt", {}, t("col_station")), h("dd", {}, s.station || "—"),
      h("dt", {}, t("col_inspection")), h("dd", {}, `${fmtDate(s.next_inspection_due)} (${t(`cadence_${s.inspection_cadence}`)})`),
    ),
    hasPumps ? h("a", { class: "btn", href: `#/pumps/${encodeURIComponent(s.site_id)}` }, t("open_pumps")) : null,
    h("h3", {}, t("site_hazards"), ` (${s.hazards_open})`),
    h("ul", { class: "mini-list" }, ...(s.hazards || []).map((hz) =>
      h("li", {}, h("a", { href: `#/hazards/${encodeURIComponent(hz.hazard_id)}` }, sevChip(hz.severity), " ", pick(hz, "title")),
        h("span", { class: `state st-${hz.state}` }, t(`hz_state_${hz.state}`))))),
    s.devices ? h("h3", {}, t("site_devices"), ` (${s.devices.length})`) : null,
    s.devices ? h("ul", { class: "mini-list" }, ...s.devices.map((d) =>
      h("li", { class: d.status !== "online" ? "offline" : "" },
        h("span", {}, h("span", { class: `status-dot st-${d.status}`, "aria-hidden": "true" }), d.device_id,
          h("span", { class: "muted" }, ` ${pick(d, "title")}`)),
        h("span", { class: "muted small" }, d.status === "online" ? fmtAgo(d.last_seen) : t(`status_${d.status}`))))) : null,
  );
}

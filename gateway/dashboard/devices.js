// Devices and profiles: the profiles in use, every device with its status, and a form that asks
// the gateway to validate a pasted profile YAML against a sample (nothing is activated).

import { post } from "./api.js";
import { t, pick } from "./i18n.js";
import { fill, fmtAgo, fmtValue, h, icon } from "./util.js";

const EXAMPLE_YAML = `profile: water-level-sensor-demo
version: 1
kind: water_level
title: {zh: 液位传感器（示例）, en: Water level sensor (example)}
transport: mqtt
cadence_s: 60
mqtt: {topic: 'fire/{site_id}/demo-level/{device_id}/up'}
points:
  - {name: level, class: analog, type: float, path: level, unit: m, range: [0, 20]}
`;
const EXAMPLE_SAMPLE = '{"ts": 1764400000, "level": 3.5}';

let root = null;
let profiles = null;
let devices = null;
const form = { yaml: "", sample: "", result: null, busy: false };

export function mount(el, ctx) {
  root = el;
  root.replaceChildren(
    h("div", { class: "devices-layout" },
      h("div", { class: "col" },
        h("section", { class: "card" },
          h("header", { class: "card-head" }, h("h3", {}, t("profiles_in_use"))),
          h("div", { class: "table-wrap" }, h("table", { class: "grid compact", dataset: { testid: "profiles-table" } },
            h("thead", {}, h("tr", {}, ...["col_profile", "col_version", "col_title", "col_transport", "col_points", "col_rules", "col_devices"]
              .map((k) => h("th", { scope: "col", class: ["col_version", "col_points", "col_rules", "col_devices"].includes(k) ? "num" : "" }, t(k))))),
            h("tbody", {})))),
        h("section", { class: "card" },
          h("header", { class: "card-head" }, h("h3", {}, t("devices"), h("span", { class: "muted count" }))),
          h("div", { class: "table-wrap tall" }, h("table", { class: "grid compact", dataset: { testid: "devices-table" } },
            h("thead", {}, h("tr", {}, ...["col_device", "col_site", "col_title", "col_location", "col_status", "last_seen"]
              .map((k) => h("th", { scope: "col" }, t(k))))),
            h("tbody", {})))),
      ),
      h("section", { class: "card validator", "aria-labelledby": "validate-title" },
        h("header", { class: "card-head" }, h("h3", { id: "validate-title" }, t("validate_title")),
          h("button", { type: "button", class: "btn ghost", dataset: { testid: "validate-example" },
            onclick: () => { form.yaml = EXAMPLE_YAML; form.sample = EXAMPLE_SAMPLE; syncForm(); } }, t("validate_example"))),
        h("p", { class: "muted small" }, t("validate_hint")),
        h("label", { class: "field block" }, h("span", {}, t("validate_yaml")),
          h("textarea", { rows: "12", spellcheck: "false", class: "mono", dataset: { testid: "validate-yaml" },
            oninput: (e) => { form.yaml = e.target.value; } })),
        h("label", { class: "field block" }, h("span", {}, t("validate_sample")),
          h("textarea", { rows: "3", spellcheck: "false", class: "mono", dataset: { testid: "validate-sample" },
            oninput: (e) => { form.sample = e.target.value; } })),
        h("div", { class: "dialog-actions left" },
          h("button", { type: "button", class: "btn primary", dataset: { testid: "validate-run" }, onclick: () => validate() }, t("validate_run"))),
        h("div", { class: "validate-result", dataset: { testid: "validate-result" }, "aria-live": "polite" }),
      ),
    ),
  );
  syncForm();
  renderResult();
}

function syncForm() {
  root.querySelector("[data-testid=validate-yaml]").value = form.yaml;
  root.querySelector("[data-testid=validate-sample]").value = form.sample;
}

async function validate() {
  if (!form.yaml.trim() || form.busy) return;
  form.busy = true;
  try {
    form.result = await post("/api/v1/profiles/validate", { profile_yaml: form.yaml, sample: form.sample.trim() || null });
  } catch (err) {
    form.result = { valid: false, problems: [err.message], readings: [] };
  } finally {
    form.busy = false;
  }
  renderResult();
}

function renderResult() {
  const box = root.querySelector("[data-testid=validate-result]");
  const r = form.result;
  if (!r) {
    box.replaceChildren();
    return;
  }
  box.dataset.valid = String(r.valid);
  fill(box,
    h("div", { class: `verdict ${r.valid ? "ok" : "bad"}` }, r.valid ? `✓ ${t("validate_ok")}` : `✗ ${t("validate_bad")}`,
      r.profile ? h("code", {}, ` ${r.profile}`) : null),
    r.problems?.length ? h("ul", { class: "problems" }, ...r.problems.map((p) => h("li", {}, p))) : null,
    r.readings?.length ? h("div", {}, h("h4", {}, t("validate_readings")),
      h("table", { class: "grid compact" },
        h("thead", {}, h("tr", {}, ...["col_metric", "col_value", "col_unit", "col_quality", "col_class"].map((k) => h("th", {}, t(k))))),
        h("tbody", {}, ...r.readings.map((x) => h("tr", {}, h("td", {}, h("code", {}, x.metric)), h("td", {}, fmtValue(x.value)),
          h("td", {}, x.unit || ""), h("td", {}, x.quality), h("td", {}, x.class)))))) : null,
  );
}

export async function update(ctx, reason) {
  if (!root) return;
  if (reason === "transition") return;
  try {
    [profiles, devices] = await Promise.all([
      profiles && reason === "beat" ? profiles : ctx.get("/api/v1/profiles"),
      ctx.get("/api/v1/devices"),
    ]);
  } catch {
    return;
  }
  const pb = root.querySelector("[data-testid=profiles-table] tbody");
  pb.replaceChildren(...profiles.map((p) => h("tr", { class: p.devices ? "" : "unused", dataset: { testid: `profile-${p.profile}` } },
    h("td", {}, h("code", {}, p.profile)), h("td", { class: "num" }, p.version), h("td", {}, pick(p, "title")),
    h("td", {}, p.transport), h("td", { class: "num" }, p.points), h("td", { class: "num" }, p.rules),
    h("td", { class: "num" }, p.devices))));
  const order = { unreachable: 0, never_seen: 1, online: 2 };
  const sorted = [...devices].sort((a, b) => order[a.status] - order[b.status] || a.site_id.localeCompare(b.site_id) ||
    a.device_id.localeCompare(b.device_id));
  root.querySelector(".count").textContent = ` (${devices.length})`;
  const db = root.querySelector("[data-testid=devices-table] tbody");
  db.replaceChildren(...sorted.map((d) => h("tr", { class: d.status !== "online" ? "offline" : "", dataset: { testid: `device-${d.device_id}`, status: d.status } },
    h("td", {}, h("code", {}, d.device_id)), h("td", {}, ctx.siteName(d.site_id)), h("td", {}, pick(d, "title")),
    h("td", {}, [d.location?.building, d.location?.floor, d.location?.room].filter(Boolean).join(" · ") || "—"),
    h("td", {}, h("span", { class: `status-dot st-${d.status}`, "aria-hidden": "true" }), t(`status_${d.status}`),
      d.status !== "online" ? icon("warn", "offline-mark", d.status_reason || t("status_unreachable")) : null),
    h("td", { title: d.last_seen || "" }, fmtAgo(d.last_seen)))));
}

// DOM and formatting helpers shared by the views.

import { t } from "./i18n.js";

/**
 * Build an element: h("tr", {class: "x", dataset: {testid: "y"}, onclick: fn}, child, "text", [more]).
 * Attribute values null/undefined/false are skipped; children may be nodes, strings, numbers or arrays.
 */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "dataset") for (const [dk, dv] of Object.entries(v)) { if (dv !== null && dv !== undefined) node.dataset[dk] = String(dv); }
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  append(node, children);
  return node;
}

/** Replace the children of ``node`` (null/false children are skipped, as in h()). */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : String(c));
  }
}

export function ms(iso) {
  if (!iso) return null;
  const v = Date.parse(iso);
  return Number.isFinite(v) ? v : null;
}

const pad = (n) => String(n).padStart(2, "0");

export function fmtDateTime(iso) {
  const v = ms(iso);
  if (v === null) return "—";
  const d = new Date(v);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDate(iso) {
  const v = ms(iso);
  if (v === null) return "—";
  const d = new Date(v);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** "mm:ss" or "h:mm:ss" since ``startMs``. */
export function fmtDuration(sinceMs, now = Date.now()) {
  const s = Math.max(0, Math.floor((now - sinceMs) / 1000));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  return hh ? `${hh}:${pad(mm)}:${pad(ss)}` : `${pad(mm)}:${pad(ss)}`;
}

export function fmtAgo(iso, now = Date.now()) {
  const v = ms(iso);
  if (v === null) return t("never");
  const s = Math.max(0, Math.round((now - v) / 1000));
  if (s < 60) return t("ago_s", { n: s });
  if (s < 3600) return t("ago_m", { n: Math.floor(s / 60) });
  if (s < 86400) return t("ago_h", { n: Math.floor(s / 3600) });
  return t("ago_d", { n: Math.floor(s / 86400) });
}

export function fmtValue(v, unit) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? t("yes") : t("no");
  if (typeof v === "number" && !Number.isInteger(v)) v = Math.round(v * 1000) / 1000;
  return unit ? `${v} ${unit}` : String(v);
}

export function codeBadge(code, testid) {
  return h("span", { class: `code code-${code}`, dataset: { testid, code } },
    h("span", { class: "code-dot", "aria-hidden": "true" }), t(`code_${code}`));
}

export function sevChip(sev) {
  return h("span", { class: `sev sev-${sev}` }, t(`sev_${sev}`));
}

export function debounce(fn, wait) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}

const ICONS = {
  flame: "M8 1c1 3 5 5 5 9a5 5 0 0 1-10 0c0-2 1-3 2-4 0 2 1 3 2 3-1-3 0-6 1-8z",
  bell: "M8 1.5a1 1 0 0 1 1 1v.6A4.5 4.5 0 0 1 12.5 7.5v3l1.5 2H2l1.5-2v-3A4.5 4.5 0 0 1 7 3.1v-.6a1 1 0 0 1 1-1zM6.5 13.5h3a1.5 1.5 0 0 1-3 0z",
  bellOff: "M2.5 2 14 13.5l-.9.9-2-2H2l1.5-2v-3c0-.8.2-1.6.6-2.3L1.6 2.9zM8 1.5a1 1 0 0 1 1 1v.6A4.5 4.5 0 0 1 12.5 7.5v2.8L5.3 3.9A4.4 4.4 0 0 1 7 3.1v-.6a1 1 0 0 1 1-1zM6.5 13.5h3a1.5 1.5 0 0 1-3 0z",
  warn: "M8 1.5 15 14H1zM7.3 6v4h1.4V6zm0 5v1.4h1.4V11z",
};

/** A small inline SVG icon (no font or image needed); decorative unless ``label`` is given. */
export function icon(name, cls = "", label = "") {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("class", `icon ${cls}`.trim());
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", ICONS[name]);
  path.setAttribute("fill", "currentColor");
  path.setAttribute("fill-rule", "evenodd");
  svg.append(path);
  return svg;
}

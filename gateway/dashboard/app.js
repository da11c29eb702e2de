// firegw ops dashboard: sign-in, the live stream, the fire-event banner and the views.
//
// No polling loop: lists are fetched when the page opens, when the stream (re)connects and when a
// transition arrives (debounced); the stream's 5 s beat refreshes the stats and the telemetry of the
// open pump room. A one-second local timer only advances the "time since opened" counters.

import { AuthError, getToken, runStream, setToken, takeTokenFromUrl, whoami, get, post } from "./api.js";
import { getLang, setLang, t, translateDom } from "./i18n.js";
import { debounce, fill, fmtDuration, h, icon, ms } from "./util.js";
import * as sitesView from "./sites.js";
import * as hazardsView from "./hazards.js";
import * as pumpsView from "./pumps.js";
import * as devicesView from "./devices.js";

const VIEWS = { sites: sitesView, hazards: hazardsView, pumps: pumpsView, devices: devicesView };
const $ = (sel) => document.querySelector(sel);
const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

const state = {
  me: null,
  canOperate: false,
  sites: [],
  events: [],
  hazards: [],
  stats: null,
  view: "sites",
  param: "",
  shownAt: new Map(), // fire event id -> Date.now() when the banner first showed it
  muted: false,
  streamAbort: null,
  mounted: new Set(),
};

// ---------------------------------------------------------------------------- context for the views

const ctx = {
  state,
  get,
  siteName(id) {
    const s = state.sites.find((x) => x.site_id === id);
    return s ? s.name : id;
  },
  go(hash) {
    if (location.hash !== hash) location.hash = hash;
    else route();
  },
  toast,
  askNote,
  /** Run an operator action; returns the updated subject or null (the error is shown). */
  async act(kind, id, action, body) {
    const base = kind === "fire_event" ? "/api/v1/events" : "/api/v1/hazards";
    try {
      const out = await post(`${base}/${encodeURIComponent(id)}/${action}`, body);
      if (kind === "fire_event") upsertEvent(out.subject);
      else upsertHazard(out.subject);
      refreshSoon();
      return out.subject;
    } catch (err) {
      if (err instanceof AuthError) return signOut(), null;
      toast(`${t("action_failed")}: ${err.message}`, "error");
      return null;
    }
  },
};

// ---------------------------------------------------------------------------- data

async function loadSites() {
  state.sites = await get("/api/v1/sites");
}

async function loadEvents() {
  state.events = await get("/api/v1/events?open=true");
  renderBanner();
}

async function loadHazards() {
  state.hazards = await get("/api/v1/hazards?open=true");
  renderHazardCount();
}

async function loadStats() {
  state.stats = await get("/api/v1/stats");
  renderStats();
}

function upsertEvent(ev) {
  if (!ev || !ev.fire_event_id) return;
  const rest = state.events.filter((e) => e.fire_event_id !== ev.fire_event_id);
  state.events = ev.state === "resolved" ? rest : [ev, ...rest];
  renderBanner();
}

function upsertHazard(hz) {
  if (!hz || !hz.hazard_id) return;
  const rest = state.hazards.filter((x) => x.hazard_id !== hz.hazard_id);
  state.hazards = hz.state === "closed" ? rest : [hz, ...rest];
  renderHazardCount();
}

async function guarded(fn) {
  try {
    await fn();
  } catch (err) {
    if (err instanceof AuthError) signOut();
    else console.warn(err);
  }
}

const refreshEvents = debounce(() => guarded(loadEvents), 80);
const refreshLists = debounce(() => guarded(async () => {
  await Promise.all([loadSites(), loadHazards(), loadStats()]);
  updateView("data");
}), 250);
function refreshSoon() {
  refreshEvents();
  refreshLists();
}

function onStream(event, data) {
  if (event === "open") {
    refreshSoon();
  } else if (event === "transition" && data) {
    if (data.kind === "fire_event" && data.fire_event) upsertEvent(data.fire_event);
    if (data.kind === "hazard" && data.hazard) upsertHazard(data.hazard);
    if (data.kind === "fire_event") refreshEvents();
    refreshLists();
    updateView("transition", data);
  } else if (event === "beat") {
    guarded(loadStats);
    updateView("beat");
  }
}

function setStreamStatus(s) {
  const el = byTestId("stream-status");
  el.dataset.state = s;
  el.querySelector(".stream-text").textContent = t(`stream_${s}`);
}

// ---------------------------------------------------------------------------- header

function renderStats() {
  const s = state.stats;
  const box = byTestId("stats");
  box.replaceChildren();
  if (!s) return;
  const online = Math.max(0, (s.devices_seen ?? 0) - (s.devices_unreachable ?? 0));
  box.append(
    h("span", { class: "stat" }, h("b", {}, online), " ", t("stat_devices"),
      s.devices_unreachable ? h("span", { class: "stat-bad" }, ` · ${s.devices_unreachable} ${t("stat_unreachable")}`) : null),
    h("span", { class: `stat ${s.hazards_open ? "stat-warn" : ""}` }, h("b", {}, s.hazards_open ?? 0), " ", t("stat_hazards")),
    h("span", { class: `stat ${s.events_open ? "stat-bad" : ""}` }, h("b", {}, s.events_open ?? 0), " ", t("stat_events")),
  );
}

function renderHazardCount() {
  const el = byTestId("nav-hazards-count");
  const n = state.hazards.length;
  el.textContent = n ? String(n) : "";
  el.hidden = !n;
}

function renderRole() {
  const el = byTestId("role");
  if (!state.me) {
    el.hidden = true;
    return;
  }
  el.hidden = false;
  el.dataset.role = state.me.role;
  el.className = `role role-${state.me.role}`;
  el.textContent = state.me.name ? `${t(`role_${state.me.role}`)} · ${state.me.name}` : t(`role_${state.me.role}`);
  byTestId("sign-out").hidden = !getToken();
}

function renderChrome() {
  translateDom();
  document.title = `firegw · ${t("app_title")}`;
  renderRole();
  renderStats();
  renderHazardCount();
  setStreamStatus(byTestId("stream-status").dataset.state || "connecting");
  renderSound();
}

// ---------------------------------------------------------------------------- fire banner

function renderBanner() {
  const banner = byTestId("fire-banner");
  const active = state.events
    .filter((e) => e.state !== "resolved")
    .sort((a, b) => (b.state === "open") - (a.state === "open") || ms(b.opened_at) - ms(a.opened_at));
  banner.hidden = active.length === 0;
  document.body.classList.toggle("has-fire", active.length > 0);
  const keep = new Set(active.map((e) => e.fire_event_id));
  for (const el of [...banner.children]) if (!keep.has(el.dataset.id)) el.remove();
  active.forEach((ev, i) => {
    let el = banner.querySelector(`[data-id="${CSS.escape(ev.fire_event_id)}"]`);
    if (!el) {
      el = h("article", { class: "fire", dataset: { testid: "fire-event", id: ev.fire_event_id } });
      if (!state.shownAt.has(ev.fire_event_id)) state.shownAt.set(ev.fire_event_id, Date.now());
      el.dataset.shownAt = String(state.shownAt.get(ev.fire_event_id));
    }
    if (banner.children[i] !== el) banner.insertBefore(el, banner.children[i] || null);
    fillFire(el, ev);
  });
  updateAlarm();
}

function fillFire(el, ev) {
  el.dataset.state = ev.state;
  el.dataset.site = ev.site_id;
  el.classList.toggle("flashing", ev.state === "open");
  el.setAttribute("aria-label", `${t("fire")} ${ctx.siteName(ev.site_id)}`);
  const where = [ev.building, ev.floor ? t("floor_n", { n: ev.floor }) : null, ev.room].filter(Boolean).join(" · ");
  const buttons = [];
  if (state.canOperate) {
    if (ev.state === "open") {
      buttons.push(h("button", { type: "button", class: "btn fire-btn", dataset: { testid: "ack-fire" },
        onclick: () => ctx.act("fire_event", ev.fire_event_id, "acknowledge", { note: "" }) }, t("fire_ack")));
    }
    if (ev.state === "open" || ev.state === "acknowledged") {
      buttons.push(h("button", { type: "button", class: "btn ghost", dataset: { testid: "arrive-fire" },
        onclick: () => ctx.act("fire_event", ev.fire_event_id, "arrive", { note: "" }) }, t("fire_arrive")));
    }
    buttons.push(h("button", { type: "button", class: "btn ghost", dataset: { testid: "resolve-fire" },
      onclick: async () => {
        const got = await askNote({ title: t("note_title_resolve"), subject: ctx.siteName(ev.site_id), resolution: true });
        if (got) ctx.act("fire_event", ev.fire_event_id, "resolve", got);
      } }, t("fire_resolve")));
  }
  fill(el,
    h("div", { class: "fire-icon" }, icon("flame")),
    h("div", { class: "fire-main" },
      h("div", { class: "fire-title" },
        h("span", { class: "fire-tag" }, t("fire")),
        h("span", { class: "fire-site" }, ctx.siteName(ev.site_id)),
        h("span", { class: "fire-id" }, ev.site_id),
        h("span", { class: `fire-state st-${ev.state}`, dataset: { testid: "fire-state" } }, t(`fire_state_${ev.state}`)),
        ev.escalation_level ? h("span", { class: "fire-esc" }, `${t("fire_escalated")} ×${ev.escalation_level}`) : null,
      ),
      h("div", { class: "fire-meta" },
        h("span", {}, h("span", { class: "k" }, t("fire_location")), " ", where || "—"),
        h("span", {}, h("span", { class: "k" }, t("fire_station")), " ", ev.station || "—"),
        h("span", {}, ev.town || "", ev.grid_cell ? ` · ${ev.grid_cell}` : ""),
        h("span", { class: "muted" }, ev.device_id),
        ev.count > 1 ? h("span", { class: "muted" }, t("fire_count", { n: ev.count })) : null,
      ),
    ),
    h("div", { class: "fire-since", title: ev.opened_at },
      h("span", { class: "k" }, t("fire_since")),
      h("span", { class: "since", dataset: { testid: "fire-since", since: ms(ev.opened_at) } }, fmtDuration(ms(ev.opened_at)))),
    buttons.length ? h("div", { class: "fire-actions", dataset: { operator: "" } }, buttons) : null,
  );
}

function tickCounters() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-testid=fire-since]")) {
    el.textContent = fmtDuration(Number(el.dataset.since), now);
  }
}

// ---------------------------------------------------------------------------- alarm sound (WebAudio)

const sound = { ctx: null, timer: null, playing: false };

function wantAlarm() {
  return !state.muted && state.events.some((e) => e.state === "open");
}

function beep() {
  // browsers let a page start audio only after a user gesture; until then the banner only flashes
  if (navigator.userActivation && !navigator.userActivation.hasBeenActive) return;
  try {
    sound.ctx ??= new AudioContext();
    if (sound.ctx.state === "suspended") sound.ctx.resume().catch(() => {});
    const ac = sound.ctx;
    const now = ac.currentTime;
    [[960, 0], [720, 0.22]].forEach(([freq, at]) => {
      const osc = ac.createOscillator();
      const gain = ac.createGain();
      osc.type = "square";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, now + at);
      gain.gain.exponentialRampToValueAtTime(0.12, now + at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + at + 0.2);
      osc.connect(gain).connect(ac.destination);
      osc.start(now + at);
      osc.stop(now + at + 0.21);
    });
  } catch {
    // no audio device: the banner still flashes
  }
}

function updateAlarm() {
  const want = wantAlarm();
  if (want && !sound.playing) {
    sound.playing = true;
    beep();
    sound.timer = setInterval(beep, 1400);
  } else if (!want && sound.playing) {
    sound.playing = false;
    clearInterval(sound.timer);
  }
  renderSound();
}

function renderSound() {
  const btn = byTestId("alarm-sound");
  btn.dataset.playing = String(sound.playing);
  btn.setAttribute("aria-pressed", String(!state.muted));
  // before any user gesture the browser keeps audio off: say so while an alarm wants to sound
  const blocked = sound.playing && navigator.userActivation && !navigator.userActivation.hasBeenActive;
  btn.replaceChildren(icon(state.muted ? "bellOff" : "bell"),
    state.muted ? ` ${t("sound_muted")}` : blocked ? ` ${t("sound_enable")}` : "");
  btn.title = state.muted ? t("sound_off") : t("sound_on");
  btn.setAttribute("aria-label", btn.title);
  btn.classList.toggle("ringing", sound.playing);
}

// ---------------------------------------------------------------------------- dialogs and toasts

let toastTimer = null;
function toast(text, kind = "info") {
  const el = byTestId("toast");
  el.textContent = text;
  el.className = `toast toast-${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, kind === "error" ? 6000 : 2500);
}

/** Ask for a note (and a resolution for fire events). Resolves to {note, resolution?} or null. */
function askNote({ title, subject, required = false, resolution = false }) {
  const dlg = byTestId("note-dialog");
  const form = dlg.querySelector("form");
  const text = byTestId("note-text");
  const error = byTestId("note-error");
  dlg.querySelector("#note-title").textContent = title;
  dlg.querySelector(".note-subject").textContent = subject || "";
  dlg.querySelector(".resolution-field").hidden = !resolution;
  text.value = "";
  text.required = required;
  error.hidden = true;
  translateDom(dlg);
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dlg.removeEventListener("cancel", onCancel);
      if (dlg.open) dlg.close();
      resolve(value);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const note = text.value.trim();
      if (required && !note) {
        error.textContent = t("note_required");
        error.hidden = false;
        text.focus();
        return;
      }
      const out = { note };
      if (resolution) out.resolution = byTestId("note-resolution").value;
      done(out);
    };
    const onCancel = (e) => {
      e.preventDefault();
      done(null);
    };
    const cancel = byTestId("note-cancel");
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dlg.addEventListener("cancel", onCancel);
    dlg.showModal();
    text.focus();
  });
}

function showLogin(message) {
  const dlg = byTestId("login-dialog");
  const err = byTestId("login-error");
  err.textContent = message || "";
  err.hidden = !message;
  translateDom(dlg);
  if (!dlg.open) dlg.showModal();
  byTestId("login-token").focus();
}

byTestId("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = byTestId("login-token").value.trim();
  if (!token) return;
  setToken(token);
  await start();
});
byTestId("login-dialog").addEventListener("cancel", (e) => e.preventDefault());

// ---------------------------------------------------------------------------- sign-in and start

async function start() {
  try {
    state.me = await whoami();
  } catch (err) {
    state.me = null;
    if (err instanceof AuthError) {
      const had = Boolean(getToken());
      setToken("");
      showLogin(had ? t("login_bad") : "");
    } else {
      showLogin(t("login_unreachable"));
    }
    renderRole();
    return;
  }
  state.canOperate = state.me.role === "operator" || state.me.role === "admin";
  document.body.dataset.role = state.me.role;
  const dlg = byTestId("login-dialog");
  if (dlg.open) dlg.close();
  byTestId("login-token").value = "";
  renderRole();
  await Promise.all([guarded(loadSites), guarded(loadEvents), guarded(loadHazards), guarded(loadStats)]);
  route();
  state.streamAbort?.abort();
  state.streamAbort = new AbortController();
  runStream({ on: onStream, status: setStreamStatus, onAuthError: signOut, signal: state.streamAbort.signal });
}

function signOut() {
  state.streamAbort?.abort();
  setToken("");
  state.me = null;
  state.canOperate = false;
  state.events = [];
  renderBanner();
  renderRole();
  showLogin("");
}

// ---------------------------------------------------------------------------- routing

function route() {
  if (!state.me) return;
  const m = location.hash.match(/^#\/(\w+)(?:\/(.*))?$/);
  const view = m && VIEWS[m[1]] ? m[1] : "sites";
  state.view = view;
  state.param = m && m[2] ? decodeURIComponent(m[2]) : "";
  for (const name of Object.keys(VIEWS)) {
    const section = byTestId(`view-${name}`);
    section.hidden = name !== view;
    document.querySelector(`.tabs [data-view="${name}"]`).setAttribute("aria-current", name === view ? "page" : "false");
  }
  const root = byTestId(`view-${view}`);
  if (!state.mounted.has(view)) {
    VIEWS[view].mount(root, ctx);
    state.mounted.add(view);
  }
  VIEWS[view].update(ctx, "route");
}

function updateView(reason, data) {
  if (!state.me || !state.mounted.has(state.view)) return;
  VIEWS[state.view].update(ctx, reason, data);
}

window.addEventListener("hashchange", route);

byTestId("lang-toggle").addEventListener("click", () => {
  setLang(getLang() === "zh" ? "en" : "zh");
  renderChrome();
  renderBanner();
  for (const name of state.mounted) VIEWS[name].mount(byTestId(`view-${name}`), ctx);
  if (state.me) VIEWS[state.view].update(ctx, "route");
});
byTestId("sign-out").addEventListener("click", signOut);
byTestId("alarm-sound").addEventListener("click", () => {
  state.muted = !state.muted;
  updateAlarm();
});
// browsers start audio only after a user gesture: resume it on the first one
document.addEventListener("pointerdown", () => {
  if (sound.ctx?.state === "suspended") sound.ctx.resume().catch(() => {});
  setTimeout(renderSound, 0);
});

takeTokenFromUrl();
renderChrome();
setInterval(tickCounters, 1000);
start();

// The gateway's ops API from the browser: bearer token, role detection and the live stream.
//
// The token comes from the login box or from ``#token=...`` in the URL fragment (removed from the
// address bar at once) and is kept in sessionStorage, so it lasts for this tab only.
//
// Role: ``GET /api/v1/whoami`` -> {name, role} when the gateway has it. Older gateways answer 404
// there (the dashboard's static mount); then the page probes ``POST /api/v1/events/__probe__/acknowledge``
// with no body: the API checks the role before it looks the event up, so 403 means a viewer and 404
// (no such event) means an operator or admin. The probe changes nothing.
//
// Live updates: EventSource cannot send an Authorization header, so the stream is read with fetch()
// and a ReadableStream, parsed as server-sent events, and reconnected with a backoff when it ends,
// fails, or stays silent past two beats.

const TOKEN_KEY = "firegw.token";

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

export function takeTokenFromUrl() {
  const m = location.hash.match(/[#&?]token=([^&]+)/);
  if (!m) return;
  setToken(decodeURIComponent(m[1]));
  let rest = location.hash.replace(/[#&?]token=[^&]+/, "").replace(/^#?[&?]?/, "");
  rest = rest.startsWith("/") ? `#${rest}` : "";
  history.replaceState(null, "", location.pathname + location.search + rest);
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lasts until the page is closed
  }
}

function headers(extra = {}) {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}`, ...extra } : extra;
}

async function detailOf(resp) {
  try {
    const body = await resp.json();
    return body.detail ?? body;
  } catch {
    return resp.statusText;
  }
}

export async function get(path) {
  const resp = await fetch(path, { headers: headers(), cache: "no-store" });
  if (resp.status === 401) throw new AuthError(await detailOf(resp));
  if (!resp.ok) throw new ApiError(resp.status, await detailOf(resp));
  return resp.json();
}

export async function post(path, body) {
  const resp = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body ?? {}),
  });
  if (resp.status === 401) throw new AuthError(await detailOf(resp));
  if (!resp.ok) throw new ApiError(resp.status, await detailOf(resp));
  return resp.json();
}

/** Who the token belongs to: {name, role}; throws AuthError for a bad token. */
export async function whoami() {
  const resp = await fetch("/api/v1/whoami", { headers: headers(), cache: "no-store" });
  if (resp.status === 401) throw new AuthError("bad token");
  if (resp.ok) {
    const body = await resp.json();
    if (body && body.role) return body;
  }
  // no whoami route: check the token, then probe the role with a harmless action on no event
  await get("/api/v1/stats");
  const probe = await fetch("/api/v1/events/__probe__/acknowledge", { method: "POST", headers: headers() });
  if (probe.status === 401) throw new AuthError("bad token");
  return { name: "", role: probe.status === 403 ? "viewer" : "operator" };
}

/**
 * Read ``/api/v1/stream`` for as long as ``signal`` is not aborted.
 * ``on(event, data)`` gets ``transition`` and ``beat``; ``status(state)`` gets connecting | live | reconnecting.
 */
export async function runStream({ on, status, onAuthError, signal }) {
  let backoff = 500;
  let first = true;
  while (!signal.aborted) {
    status(first ? "connecting" : "reconnecting");
    first = false;
    const ctl = new AbortController();
    const abort = () => ctl.abort();
    signal.addEventListener("abort", abort, { once: true });
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => ctl.abort(), 12_000); // beats come every 5 s
    };
    try {
      const resp = await fetch("/api/v1/stream", {
        headers: headers({ Accept: "text/event-stream" }),
        cache: "no-store",
        signal: ctl.signal,
      });
      if (resp.status === 401) {
        onAuthError();
        return;
      }
      if (!resp.ok || !resp.body) throw new Error(`stream: HTTP ${resp.status}`);
      arm();
      status("live");
      backoff = 500;
      on("open", null);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (!data.length) continue;
          let parsed = null;
          try {
            parsed = JSON.parse(data.join("\n"));
          } catch {
            continue;
          }
          on(event, parsed);
        }
      }
    } catch {
      // network error, abort by the watchdog, or the gateway restarting: reconnect below
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener("abort", abort);
    }
    if (signal.aborted) return;
    status("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 10_000);
  }
}

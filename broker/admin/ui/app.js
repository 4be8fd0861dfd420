// Ferry's dashboard: a hash-routed single page over the admin REST API
// (/api/v1, see /api/v1/openapi.json). No framework: pages build DOM nodes
// with el(), never HTML strings, so data from clients (ids, topics,
// payloads) cannot inject markup. The admin token lives in sessionStorage
// (this tab only) and goes out as "Authorization: Bearer".
import { MQTTClient } from "./mqtt.js";
import { drawChart, fmt } from "./chart.js";

const TOKEN_KEY = "ferry.admin.token";
const STATS_EVERY_MS = 1000;
const STATS_KEEP = 120; // samples on the charts: 2 minutes
const LIVE_KEEP = 500; // messages kept by the live view
const PAGE_SIZE = 50;

const state = {
  info: null,
  samples: [], // {t, stats} from /api/v1/stats, oldest first
  statsTimer: null,
  statsGen: 0, // bumped by stopStats: a poll of an older generation ends
  cleanup: null, // the current page's teardown
  live: { client: null, url: "", messages: [], subs: [], state: "disconnected" },
};

// ---------- DOM and formatting helpers ----------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "value") e.value = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of kids.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const $ = (sel, root = document) => root.querySelector(sel);

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 100 ? 1 : 0) : n) + " " + u[i];
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + (s % 60) + "s";
  return s + "s";
}

function since(iso) {
  if (!iso) return "–";
  const t = Date.parse(iso);
  if (isNaN(t)) return iso;
  return el("span", { title: new Date(t).toLocaleString() }, duration((Date.now() - t) / 1000) + " ago");
}

const num = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString());
const protocol = (v) => ({ 3: "3.1", 4: "3.1.1", 5: "5.0" })[v] || String(v ?? "–");

function badge(text, kind) {
  return el("span", { class: "badge " + (kind || "") }, text);
}

let statusTimer = null;
// flash shows a short message in the corner; errors stay longer.
function flash(msg, isError) {
  const s = $("#status");
  s.textContent = msg;
  s.className = isError ? "error" : "";
  s.hidden = false;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { s.hidden = true; }, isError ? 8000 : 3000);
}

// confirmButton needs two clicks within 4 s for actions that lose data.
function confirmButton(label, attrs, action) {
  const b = el("button", Object.assign({ type: "button", class: "danger small" }, attrs), label);
  let armed = null;
  b.addEventListener("click", async () => {
    if (!armed) {
      b.textContent = "Confirm " + label.toLowerCase() + "?";
      b.classList.add("confirm");
      armed = setTimeout(() => { armed = null; b.textContent = label; b.classList.remove("confirm"); }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    b.textContent = label;
    b.classList.remove("confirm");
    await action();
  });
  return b;
}

// button runs an async action, disabled while it runs, and reports errors.
function button(label, attrs, action) {
  const b = el("button", Object.assign({ type: "button" }, attrs), label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await action(); } catch (e) { report(e); } finally { b.disabled = false; }
  });
  return b;
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", null,
    el("thead", null, el("tr", null, headers.map((h) => el("th", { class: h.endsWith(" ") ? "num" : null }, h.trim())))),
    el("tbody", null, rows));
}

// ---------- the API ----------

class AuthError extends Error {}

class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) throw new AuthError("the admin token was refused");
  const type = r.headers.get("Content-Type") || "";
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try {
      if (type.includes("json")) {
        const p = await r.json();
        msg = [p.title, p.detail].filter(Boolean).join(": ") || msg;
      } else {
        msg = (await r.text()).trim() || msg;
      }
    } catch (_) { /* keep the status line */ }
    throw new APIError(r.status, msg);
  }
  if (r.status === 204) return null;
  return type.includes("json") ? r.json() : r.text();
}

const enc = encodeURIComponent;

// report shows an error; a refused token sends the user to the login form.
function report(e) {
  if (e instanceof AuthError) { showLogin(e.message); return; }
  console.error(e);
  flash(e.message || String(e), true);
}

// ---------- login and the stats poller ----------

function showLogin(error) {
  stopStats();
  teardown();
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  const main = $("#main");
  main.replaceChildren($("#login-tpl").content.cloneNode(true));
  if (error && sessionStorage.getItem(TOKEN_KEY)) {
    const p = $("#login-error");
    p.textContent = error;
    p.hidden = false;
  }
  sessionStorage.removeItem(TOKEN_KEY);
  $("#login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value);
    start();
  });
}

async function start() {
  try {
    state.info = await api("GET", "/api/v1/info");
  } catch (e) {
    if (e instanceof AuthError) { showLogin(e.message); return; }
    $("#main").replaceChildren(el("div", { class: "card error" }, "Cannot reach the admin API: " + e.message));
    return;
  }
  $("#node").textContent = [state.info.node, state.info.version].filter(Boolean).join(" · ");
  $("#nav").hidden = false;
  $("#logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  startStats();
  route();
}

function startStats() {
  stopStats();
  const gen = state.statsGen;
  const poll = async () => {
    let s = null;
    try {
      s = await api("GET", "/api/v1/stats");
    } catch (e) {
      if (gen !== state.statsGen) return;
      if (e instanceof AuthError) { report(e); return; }
      // A failed poll is a gap on the charts; the next one may work.
      if (state.samples.length && state.samples[state.samples.length - 1].stats) flash("Stats: " + e.message, true);
    }
    if (gen !== state.statsGen) return; // stopped while the request ran
    state.samples.push({ t: performance.now(), stats: s });
    if (state.samples.length > STATS_KEEP + 1) state.samples.shift();
    document.body.dataset.samples = String(state.samples.length); // for tests: charts have data
    window.dispatchEvent(new Event("ferry:stats"));
    state.statsTimer = setTimeout(poll, STATS_EVERY_MS);
  };
  poll();
}

function stopStats() {
  state.statsGen++;
  clearTimeout(state.statsTimer);
  state.statsTimer = null;
}

// ---------- routing ----------

const pages = {
  overview: overviewPage,
  clients: clientsPage,
  client: clientPage,
  retained: retainedPage,
  bridges: bridgesPage,
  live: livePage,
};

function teardown() {
  if (state.cleanup) state.cleanup();
  state.cleanup = null;
}

function route() {
  if (!state.info) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  let name = parts[0] || "overview";
  let arg = parts.slice(1).join("/");
  try { arg = decodeURIComponent(arg); } catch (_) { /* a hand-typed hash: take it as it is */ }
  if (name === "clients" && arg) name = "client";
  const page = pages[name] || overviewPage;
  teardown();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === (name === "client" ? "clients" : name));
  }
  const main = $("#main");
  main.replaceChildren();
  main.dataset.page = name;
  state.cleanup = page(main, arg) || null;
}

// ---------- Overview ----------

function overviewPage(main) {
  const tiles = {};
  const tile = (key, label) => {
    tiles[key] = el("div", { class: "v" }, "–");
    return el("div", { class: "stat" }, tiles[key], el("div", { class: "k" }, label));
  };
  const connChart = el("canvas", { class: "chart", id: "chart-connections" });
  const msgChart = el("canvas", { class: "chart", id: "chart-messages" });
  const drops = el("div", { id: "drops" });
  main.append(
    el("h1", null, "Overview"),
    el("div", { class: "grid" },
      tile("connections", "Connections"), tile("sessions", "Sessions"), tile("subscriptions", "Subscriptions"),
      tile("retained", "Retained"), tile("in", "Messages in"), tile("out", "Messages out"),
      tile("storage", "Storage used"), tile("free", "Storage free"), tile("uptime", "Uptime")),
    el("div", { class: "grid2" },
      el("div", { class: "card" }, el("h2", null, "Connections"), connChart),
      el("div", { class: "card" }, el("h2", null, "Messages per second"), msgChart)),
    el("div", { class: "card" }, el("h2", null, "Dropped messages by reason"), drops));

  const render = () => {
    const last = state.samples.findLast((x) => x.stats);
    if (!last) return;
    const s = last.stats;
    tiles.connections.textContent = num(s.connections);
    tiles.sessions.textContent = num(s.sessions);
    tiles.subscriptions.textContent = num(s.subscriptions);
    tiles.retained.textContent = num(s.retained);
    tiles.in.textContent = num(s.messages_in);
    tiles.out.textContent = num(s.messages_out);
    tiles.storage.textContent = bytes(s.storage && s.storage.size_bytes);
    tiles.free.textContent = bytes(s.storage && s.storage.free_bytes);
    tiles.uptime.textContent = duration(s.uptime_seconds);

    // Counters are totals: a rate needs two samples; a counter that went
    // down (broker restarted) gives a gap, not a negative rate.
    const rate = (key) => state.samples.slice(1).map((cur, i) => {
      const prev = state.samples[i];
      if (!cur.stats || !prev.stats) return null;
      const d = cur.stats[key] - prev.stats[key], dt = (cur.t - prev.t) / 1000;
      return d >= 0 && dt > 0 ? d / dt : null;
    });
    const axis = { capacity: STATS_KEEP, period: STATS_EVERY_MS / 1000 };
    drawChart(connChart, [{ label: "connected", color: "#1769aa",
      values: state.samples.slice(1).map((x) => (x.stats ? x.stats.connections : null)) }], { ...axis, unit: "clients", integer: true });
    drawChart(msgChart, [
      { label: "in", color: "#1a7f37", values: rate("messages_in") },
      { label: "out", color: "#b76e00", values: rate("messages_out") },
    ], { ...axis, unit: "msg/s" });

    const reasons = Object.entries(s.drops || {}).sort((a, b) => b[1] - a[1]);
    drops.replaceChildren(table(["reason", "dropped "],
      reasons.map(([r, c]) => el("tr", null, el("td", null, el("code", null, r)), el("td", { class: "num" }, num(c)))),
      "No message was dropped."));
  };
  render();
  window.addEventListener("ferry:stats", render);
  window.addEventListener("resize", render);
  return () => {
    window.removeEventListener("ferry:stats", render);
    window.removeEventListener("resize", render);
  };
}

// ---------- paged lists ----------

// pagedList loads pages of a list endpoint; path(cursor) gives the URL and
// row(item) a table row. It returns the container and a reload function.
function pagedList(headers, empty, path, row) {
  const box = el("div");
  let cursors = [""]; // cursor of each page seen, for "previous"
  let latest = 0; // only the last request started may render
  const load = async (i) => {
    const mine = ++latest;
    let r;
    try {
      r = await api("GET", path(cursors[i]));
    } catch (e) { report(e); return; }
    if (mine !== latest) return;
    cursors = cursors.slice(0, i + 1);
    if (r.next_cursor) cursors.push(r.next_cursor);
    const pager = el("div", { class: "pager" },
      i > 0 ? button("← Previous", { class: "secondary small" }, () => load(i - 1)) : null,
      r.next_cursor ? button("Next →", { class: "secondary small" }, () => load(i + 1)) : null);
    box.replaceChildren(table(headers, (r.items || []).map(row), empty), pager);
    box.dataset.page = String(i);
  };
  return { box, reload: (first) => load(first ? 0 : Number(box.dataset.page || 0)) };
}

// ---------- Clients ----------

function kick(id, discard) {
  return api("POST", "/api/v1/clients/" + enc(id) + "/disconnect", discard ? { discard_session: true } : undefined)
    .then(() => flash((discard ? "Disconnected " + id + " and discarded its session" : "Disconnected " + id)));
}

function clientsPage(main) {
  const q = el("input", { id: "client-search", type: "search", placeholder: "client id or user name" });
  const connected = el("select", { id: "client-connected" },
    el("option", { value: "" }, "all"), el("option", { value: "true" }, "connected"),
    el("option", { value: "false" }, "disconnected"));
  const list = pagedList(
    ["client id", "user", "address", "listener", "MQTT", "state", "since", "in-flight ", "queued ", "bytes in ", "bytes out ", ""],
    "No client matches.",
    (cursor) => "/api/v1/clients?limit=" + PAGE_SIZE + "&cursor=" + enc(cursor) + "&q=" + enc(q.value.trim()) +
      (connected.value ? "&connected=" + connected.value : ""),
    (c) => el("tr", { dataset: { clientId: c.client_id } },
      el("td", null, el("a", { href: "#/clients/" + enc(c.client_id) }, c.client_id)),
      el("td", null, c.username || ""),
      el("td", null, c.address || ""),
      el("td", null, c.listener || ""),
      el("td", null, protocol(c.protocol_version)),
      el("td", null, c.connected ? badge("connected", "ok") : badge("offline")),
      el("td", null, c.connected ? since(c.connected_since) : ""),
      el("td", { class: "num" }, num(c.inflight)),
      el("td", { class: "num" }, num(c.queued)),
      el("td", { class: "num" }, bytes(c.bytes_in)),
      el("td", { class: "num" }, bytes(c.bytes_out)),
      el("td", null, c.connected ? button("Kick", { class: "danger small kick", title: "disconnect; the session stays" },
        () => kick(c.client_id, false).then(() => list.reload())) : null)));
  const form = el("form", { class: "inline" },
    el("label", null, "Search", q), el("label", null, "State", connected),
    el("button", { type: "submit", id: "client-search-go" }, "Search"),
    button("Refresh", { class: "secondary", id: "client-refresh" }, () => list.reload()));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); list.reload(true); });
  main.append(el("h1", null, "Clients"), el("div", { class: "card" }, form, list.box));
  list.reload(true);
}

// ---------- one client ----------

function clientPage(main, id) {
  main.append(el("h1", null, "Client ", el("code", null, id)), el("p", null, el("a", { href: "#/clients" }, "← all clients")));
  const body = el("div", { id: "client-detail" });
  main.append(body);
  const base = "/api/v1/clients/" + enc(id);
  const load = async () => {
    let c;
    try {
      c = await api("GET", base);
    } catch (e) {
      if (e instanceof APIError && e.status === 404) {
        body.replaceChildren(el("div", { class: "card" }, "No client or session with id ", el("code", null, id), "."));
        return;
      }
      report(e);
      return;
    }
    const kv = (k, v) => [el("dt", null, k), el("dd", null, v)];
    const filter = el("input", { id: "sub-filter", placeholder: "devices/+/commands", required: true });
    const qos = el("select", { id: "sub-qos" }, [0, 1, 2].map((n) => el("option", { value: String(n) }, "QoS " + n)));
    const add = el("form", { class: "inline" }, el("label", null, "Filter", filter), el("label", null, "QoS", qos),
      el("button", { type: "submit" }, "Add subscription"));
    add.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api("POST", base + "/subscriptions", { filter: filter.value, qos: Number(qos.value) });
        flash("Subscribed " + id + " to " + filter.value);
        load();
      } catch (e) { report(e); }
    });
    const subs = (c.subscriptions || []).map((s) => el("tr", { dataset: { filter: s.filter } },
      el("td", null, el("code", null, s.filter)),
      el("td", { class: "num" }, s.qos),
      el("td", null, [s.no_local ? "no local" : "", s.retain_as_published ? "retain as published" : "",
        s.retain_handling ? "retain handling " + s.retain_handling : "", s.identifier ? "id " + s.identifier : ""]
        .filter(Boolean).join(", ")),
      el("td", null, button("Remove", { class: "danger small" }, async () => {
        await api("DELETE", base + "/subscriptions?filter=" + enc(s.filter));
        flash("Removed " + s.filter);
        load();
      }))));
    body.replaceChildren(
      el("div", { class: "grid2" },
        el("div", { class: "card" }, el("h2", null, "Connection"), el("dl", { class: "kv" },
          kv("State", c.connected ? badge("connected", "ok") : badge("offline")),
          kv("User name", c.username || "–"), kv("Address", c.address || "–"), kv("Listener", c.listener || "–"),
          kv("MQTT", protocol(c.protocol_version)), kv("Connected since", c.connected ? since(c.connected_since) : "–"),
          kv("Keepalive", c.keepalive ? c.keepalive + " s" : "none"), kv("Clean start", c.clean_start ? "yes" : "no"),
          kv("Session expiry", !c.session_expiry ? "at disconnect"
            : c.session_expiry >= 0xffffffff ? "never" : duration(c.session_expiry)),
          kv("Bytes in / out", bytes(c.bytes_in) + " / " + bytes(c.bytes_out))),
        el("div", { class: "toolbar" },
          c.connected ? button("Kick", { class: "danger kick" }, () => kick(id, false).then(load)) : null,
          confirmButton("Discard session", { class: "danger discard" }, () => kick(id, true).then(load).catch(report)))),
        el("div", { class: "card" }, el("h2", null, "Queue"), el("dl", { class: "kv" },
          kv("In flight (sent, not yet acknowledged)", num(c.inflight)),
          kv("Queued (waiting for the client)", num(c.queued))))),
      el("div", { class: "card" }, el("h2", null, "Subscriptions"),
        table(["filter", "QoS ", "options", ""], subs, "No subscriptions."), add));
  };
  load();
}

// ---------- Retained ----------

// fromBase64 decodes a JSON []byte field for display: the UTF-8 text, or
// the first bytes in hex when it is binary.
function fromBase64(b64) {
  if (!b64) return "";
  let raw;
  try { raw = atob(b64); } catch (_) { return "base64: " + b64; }
  return payloadView(Uint8Array.from(raw, (ch) => ch.charCodeAt(0)));
}

// payloadText is a list item's payload preview, at most PREVIEW
// characters (the API already cuts payloads to their first KiB); the whole
// message is one click away.
const PREVIEW = 200;
function payloadText(m) {
  let t = m.payload_text ?? fromBase64(m.payload_base64);
  const more = m.truncated || t.length > PREVIEW;
  if (t.length > PREVIEW) t = t.slice(0, PREVIEW);
  return more ? t + " …" : t;
}

function retainedPage(main) {
  const filter = el("input", { id: "retained-filter", value: "#", required: true });
  const detail = el("div");
  const list = pagedList(["topic", "QoS ", "size ", "content type", "payload", ""], "No retained message matches.",
    (cursor) => "/api/v1/retained?limit=" + PAGE_SIZE + "&cursor=" + enc(cursor) + "&filter=" + enc(filter.value),
    (m) => el("tr", { dataset: { topic: m.topic } },
      el("td", null, button(m.topic, { class: "link" }, () => show(m.topic))),
      el("td", { class: "num" }, m.qos),
      el("td", { class: "num" }, bytes(m.size)),
      el("td", null, m.content_type || ""),
      el("td", { class: "payload" }, payloadText(m)),
      el("td", null, button("Delete", { class: "danger small delete" }, async () => {
        await api("DELETE", "/api/v1/retained?topic=" + enc(m.topic));
        flash("Deleted the retained message on " + m.topic);
        detail.replaceChildren();
        list.reload();
      }))));
  const show = async (topic) => {
    const m = await api("GET", "/api/v1/retained/message?topic=" + enc(topic));
    const full = fromBase64(m.payload_base64);
    detail.replaceChildren(el("div", { class: "card" }, el("h2", null, "Retained on ", el("code", null, topic)),
      el("dl", { class: "kv" }, el("dt", null, "QoS"), el("dd", null, m.qos), el("dt", null, "Size"), el("dd", null, bytes(m.size)),
        el("dt", null, "Content type"), el("dd", null, m.content_type || "–"),
        el("dt", null, "Payload"), el("dd", { class: "payload" }, el("code", null, full)))));
  };
  const form = el("form", { class: "inline" }, el("label", null, "Topic filter", filter),
    el("button", { type: "submit" }, "Browse"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); detail.replaceChildren(); list.reload(true); });
  main.append(el("h1", null, "Retained messages"), el("div", { class: "card" }, form, list.box), detail);
  list.reload(true);
}

// ---------- Bridges ----------

function stateBadge(s) {
  const kind = { connected: "ok", backing_off: "warn", paused: "warn", failing: "bad" }[s] || "";
  return badge((s || "unknown").replace("_", " "), kind);
}

function bridgesPage(main) {
  const box = el("div", { class: "card" });
  const dlq = el("div");
  main.append(el("h1", null, "Bridges"), box, dlq);
  let prev = null; // last poll: {t, delivered by route}
  let timer = null, stopped = false;

  // showDead lists a route's dead letters from seq after on, a page at a time.
  const showDead = async (route, after = 0) => {
    const base = "/api/v1/bridges/" + enc(route) + "/deadletters";
    let r;
    try { r = await api("GET", base + "?limit=" + PAGE_SIZE + "&after=" + after); } catch (e) { report(e); return; }
    const items = Array.isArray(r) ? r : r.items || [];
    const checks = new Map();
    const rows = items.map((d) => {
      const cb = el("input", { type: "checkbox" });
      checks.set(d.seq, cb);
      const text = d.payload_text ?? fromBase64(d.payload);
      return el("tr", { dataset: { seq: d.seq } }, el("td", null, cb), el("td", { class: "num" }, d.seq),
        el("td", null, since(d.created)), el("td", null, el("code", null, d.topic)), el("td", null, d.client_id || ""),
        el("td", null, d.reason), el("td", { class: "payload" }, text.slice(0, 200)));
    });
    const selected = () => [...checks].filter(([, cb]) => cb.checked).map(([seq]) => seq);
    const replay = async (seqs) => {
      const res = await api("POST", base + "/replay", seqs.length ? { seqs } : {});
      flash("Replayed " + (res && res.replayed !== undefined ? res.replayed : seqs.length || "all") + " dead letters of " + route);
      showDead(route);
    };
    const purge = async (seqs) => {
      await api("DELETE", base, seqs.length ? { seqs } : undefined);
      flash("Purged dead letters of " + route);
      showDead(route);
    };
    dlq.replaceChildren(el("div", { class: "card", id: "deadletters" },
      el("h2", null, "Dead letters of ", el("code", null, route)),
      el("div", { class: "toolbar" },
        button("Replay selected", { class: "small replay" }, () => replay(selected())),
        button("Replay all", { class: "secondary small replay-all" }, () => replay([])),
        confirmButton("Purge selected", {}, () => purge(selected()).catch(report)),
        confirmButton("Purge all", {}, () => purge([]).catch(report)),
        button("Close", { class: "secondary small" }, async () => { dlq.replaceChildren(); })),
      table(["", "seq ", "created", "topic", "client", "reason", "payload"], rows, after ? "No more dead letters." : "No dead letters."),
      el("div", { class: "pager" },
        after ? button("← First", { class: "secondary small" }, () => showDead(route)) : null,
        items.length === PAGE_SIZE ? button("Next →", { class: "secondary small" }, () => showDead(route, items[items.length - 1].seq)) : null)));
  };

  const poll = async () => {
    let r;
    try { r = await api("GET", "/api/v1/bridges"); } catch (e) { report(e); return; }
    const now = performance.now();
    const items = r.items || [];
    const rows = items.map((b) => {
      const before = prev ? prev.delivered[b.route] : undefined;
      const rate = before !== undefined && b.delivered >= before ? (b.delivered - before) / ((now - prev.t) / 1000) : null;
      const paused = b.state === "paused";
      return el("tr", { dataset: { route: b.route } },
        el("td", null, el("code", null, b.route)), el("td", null, b.direction || ""), el("td", null, b.connector || ""),
        el("td", null, stateBadge(b.state), b.reason ? el("div", { class: "muted" }, b.reason) : null),
        el("td", { class: "num" }, num(b.delivered)), el("td", { class: "num" }, rate === null ? "–" : fmt(rate)),
        el("td", { class: "num" }, num(b.failed)), el("td", { class: "num" }, num(b.dead)),
        el("td", { class: "num" }, num(b.lag_messages)), el("td", { class: "num" }, b.lag_seconds == null ? "–" : fmt(b.lag_seconds) + " s"),
        el("td", { class: "num" }, bytes(b.outbox_bytes)),
        el("td", null,
          button(paused ? "Resume" : "Pause", { class: "secondary small" }, async () => {
            await api("POST", "/api/v1/bridges/" + enc(b.route) + (paused ? "/resume" : "/pause"));
            flash((paused ? "Resumed " : "Paused ") + b.route);
            poll();
          }), " ",
          button("Dead letters", { class: "secondary small dead-letters" }, () => showDead(b.route))));
    });
    prev = { t: now, delivered: Object.fromEntries(items.map((b) => [b.route, b.delivered])) };
    box.replaceChildren(table(["route", "direction", "connector", "state", "delivered ", "msg/s ", "failed ", "dead ",
      "lag ", "lag time ", "outbox ", ""], rows, "No bridges are configured (see docs/bridges.md)."));
  };
  const loop = async () => {
    await poll();
    if (!stopped) timer = setTimeout(loop, STATS_EVERY_MS); // a poll in flight at teardown ends here
  };
  loop();
  return () => { stopped = true; clearTimeout(timer); };
}

// ---------- Live ----------

// wsURL builds the URL of Ferry's WebSocket listener from /api/v1/info,
// using this page's host name when the listener binds every interface.
function wsURL(info) {
  const ws = info && info.websocket;
  if (!ws || !ws.addr) return "";
  const i = ws.addr.lastIndexOf(":");
  let host = ws.addr.slice(0, i);
  const port = ws.addr.slice(i + 1);
  if (["", "0.0.0.0", "::", "[::]"].includes(host)) host = location.hostname;
  if (host.includes(":") && !host.startsWith("[")) host = "[" + host + "]";
  return (ws.tls ? "wss://" : "ws://") + host + ":" + port + (ws.path || "/");
}

function payloadView(bytesArr) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytesArr);
  } catch (_) {
    return "hex: " + Array.from(bytesArr.slice(0, 256), (b) => b.toString(16).padStart(2, "0")).join(" ");
  }
}

function livePage(main) {
  const live = state.live;
  if (!live.url) live.url = wsURL(state.info);
  const url = el("input", { id: "live-url", value: live.url, size: 40, placeholder: "ws://host:8083/mqtt" });
  const user = el("input", { id: "live-user", autocomplete: "off", placeholder: "if MQTT auth is on" });
  const pass = el("input", { id: "live-pass", type: "password", autocomplete: "off" });
  const stateText = el("span", { id: "live-state" });
  const connectBtn = el("button", { type: "submit", id: "live-connect" });
  const filter = el("input", { id: "live-filter", value: "#" });
  const subQos = el("select", { id: "live-qos" }, [0, 1, 2].map((n) => el("option", { value: String(n) }, "QoS " + n)));
  const subsBox = el("div", { id: "live-subs" });
  const msgsBody = el("tbody", { id: "live-messages" });
  const count = el("span", { class: "muted" });
  const pubTopic = el("input", { id: "pub-topic", value: "ferry/test" });
  const pubPayload = el("textarea", { id: "pub-payload" }, "hello from the Ferry dashboard");
  const pubQos = el("select", { id: "pub-qos" }, [0, 1, 2].map((n) => el("option", { value: String(n) }, "QoS " + n)));
  const pubRetain = el("input", { id: "pub-retain", type: "checkbox" });

  const renderState = () => {
    const on = live.state === "connected";
    stateText.replaceChildren(badge(live.state, on ? "ok" : live.state === "connecting" ? "warn" : ""));
    connectBtn.textContent = on || live.state === "connecting" ? "Disconnect" : "Connect";
    for (const b of main.querySelectorAll("[data-needs-connection]")) b.disabled = !on;
  };
  const renderSubs = () => {
    subsBox.replaceChildren(...live.subs.map((s) => el("span", { class: "badge", dataset: { filter: s.filter } },
      s.filter + " (QoS " + s.qos + ") ",
      el("button", { type: "button", class: "link", title: "unsubscribe", onclick: async () => {
        try { await live.client.unsubscribe(s.filter); } catch (e) { report(e); }
        live.subs = live.subs.filter((x) => x !== s);
        renderSubs();
      } }, "×"), " ")));
  };
  const row = (m) => el("tr", { dataset: { topic: m.topic } },
    el("td", null, m.time.toLocaleTimeString()), el("td", null, el("code", null, m.topic)),
    el("td", { class: "num" }, m.qos), el("td", null, m.retain ? "retained" : ""),
    el("td", { class: "payload" }, m.text));
  const renderCount = () => { count.textContent = live.messages.length + " messages (newest first)"; };
  const onMessage = (topic, payload, { qos, retain }) => {
    const m = { time: new Date(), topic, qos, retain, text: payloadView(payload) };
    live.messages.unshift(m);
    if (live.messages.length > LIVE_KEEP) live.messages.pop();
    if (msgsBody.isConnected) {
      msgsBody.prepend(row(m));
      while (msgsBody.children.length > LIVE_KEEP) msgsBody.lastChild.remove();
      renderCount();
    }
  };

  const connectForm = el("form", { class: "inline" }, el("label", null, "WebSocket URL", url),
    el("label", null, "MQTT user name", user), el("label", null, "Password", pass), connectBtn, stateText);
  connectForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (live.client) { live.client.close(); return; }
    live.url = url.value.trim();
    const c = new MQTTClient();
    live.client = c;
    live.state = "connecting";
    renderState();
    c.onmessage = (...a) => live.onMessage(...a);
    c.onclose = (reason) => {
      if (live.client !== c) return;
      live.client = null;
      live.subs = [];
      live.state = "disconnected";
      if (reason !== "closed by the user") flash("Live view: " + reason, true);
      live.render();
    };
    try {
      await c.connect(live.url, { clientId: "ferry-dashboard-" + Math.random().toString(36).slice(2, 10),
        username: user.value, password: pass.value });
      live.state = "connected";
      live.render();
    } catch (e) { /* onclose has reported it */ }
  });
  const subForm = el("form", { class: "inline" }, el("label", null, "Topic filter", filter), el("label", null, "QoS", subQos),
    el("button", { type: "submit", id: "live-subscribe", dataset: { needsConnection: "" } }, "Subscribe"), subsBox);
  subForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = filter.value.trim();
    try {
      const granted = await live.client.subscribe(f, Number(subQos.value));
      live.subs = live.subs.filter((s) => s.filter !== f).concat([{ filter: f, qos: granted }]);
      renderSubs();
      flash("Subscribed to " + f);
    } catch (e) { report(e); }
  });
  const pubForm = el("form", { class: "stack" }, el("label", null, "Topic", pubTopic), el("label", null, "Payload", pubPayload),
    el("label", null, "QoS", pubQos), el("label", { class: "check" }, pubRetain, "retain"),
    el("button", { type: "submit", id: "pub-send", dataset: { needsConnection: "" } }, "Publish"));
  pubForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await live.client.publish(pubTopic.value, pubPayload.value, { qos: Number(pubQos.value), retain: pubRetain.checked });
      flash("Published to " + pubTopic.value);
    } catch (e) { report(e); }
  });

  main.append(el("h1", null, "Live topics"));
  if (!state.info.websocket) {
    main.append(el("div", { class: "card error" },
      "This broker has no WebSocket listener: add one ({type: ws, addr: \":8083\"}) to use the live view."));
  }
  main.append(
    el("div", { class: "card" }, el("h2", null, "Connection"), connectForm, subForm,
      el("p", { class: "muted" }, "Connects from this browser to Ferry's MQTT WebSocket listener as an MQTT 3.1.1 client with a clean session.")),
    el("div", { class: "live-grid" },
      el("div", { class: "card" }, el("h2", null, "Messages ", count),
        el("div", { class: "messages" }, el("table", null,
          el("thead", null, el("tr", null, ["time", "topic", "QoS", "", "payload"].map((h) => el("th", null, h)))),
          msgsBody)),
        el("div", { class: "pager" }, button("Clear", { class: "secondary small" }, async () => {
          live.messages = [];
          msgsBody.replaceChildren();
          renderCount();
        }))),
      el("div", { class: "card" }, el("h2", null, "Publish a test message"), pubForm)));

  live.onMessage = onMessage;
  live.render = () => { if (main.isConnected) { renderState(); renderSubs(); } };
  msgsBody.replaceChildren(...live.messages.map(row));
  renderCount();
  renderState();
  renderSubs();
  // The connection outlives the page: messages keep arriving while the
  // user looks elsewhere.
}

// ---------- boot ----------

$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.live.client) state.live.client.close();
  state.info = null;
  state.samples = [];
  showLogin();
});
window.addEventListener("hashchange", route);
start();

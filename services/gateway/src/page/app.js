// The Edge Manager page: reads /api/v1, follows /api/v1/events, and re-reads a list only
// when an event says it changed (debounced), so a busy system costs one fetch per burst.
"use strict";

const state = {
  clusters: new Map(), // name -> cluster view + receivedAt (ms), for "last seen" ageing
  releases: [],
  rollouts: new Map(), // request id -> request result, newest last
  records: new Map(), // request id -> its rollout record, or null for a request without one
  matched: new Set(), // clusters the install form's selector matches, drawn on the map
  history: null, // the release row whose history is shown
};
const MAX_ROLLOUTS = 6;

// ---- small helpers ------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);

/** Builds an element; children are nodes or strings (always text, never HTML). */
function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Calls the API; throws an Error carrying the server's message. */
async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.message ? data.message : `${method} ${path}: HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function say(form, text, kind) {
  const message = $(".message", form);
  message.textContent = text;
  message.className = `message ${kind || ""}`;
}

// ---- clusters -----------------------------------------------------------------------

function lastSeenSeconds(cluster) {
  if (cluster.lastSeenSecondsAgo === undefined) return null;
  return cluster.lastSeenSecondsAgo + (Date.now() - cluster.receivedAt) / 1000;
}

/** Health ages on the page too: three missed heartbeats make a site unreachable. */
function healthOf(cluster) {
  const seen = lastSeenSeconds(cluster);
  if (seen !== null && cluster.intervalSeconds && seen > 3 * cluster.intervalSeconds) return "unreachable";
  return cluster.health;
}

async function loadClusters() {
  const list = await api("GET", "/api/v1/clusters");
  const now = Date.now();
  state.clusters = new Map(list.map((c) => [c.name, { ...c, receivedAt: now }]));
  renderClusters();
}

function renderClusters() {
  const body = $("#clusters tbody");
  const rows = [...state.clusters.values()].map((c) => {
    const health = healthOf(c);
    const offline = health === "unreachable" || health === "unknown";
    const labels = Object.entries(c.labels).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
    const seen = lastSeenSeconds(c);
    return h("tr", { "data-cluster": c.name, class: [offline ? "offline" : "", state.matched.has(c.name) ? "matched" : ""].join(" ") },
      h("td", { class: "name" }, c.name),
      h("td", { class: "labels" }, labels),
      h("td", { class: "health" },
        h("span", { class: `badge ${health}`, title: c.error || "" }, health),
        offline ? h("span", { class: "seen" }, seen === null ? "never seen" : `last seen ${ago(seen)}`) : null),
      h("td", { class: "pods num" }, c.podsTotal ?? "–"),
      h("td", { class: "version" }, c.kubernetesVersion || "–"),
      h("td", { class: "seen-at" }, ago(seen)));
  });
  body.replaceChildren(...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colSpan: 6 }, "No edge cluster has registered yet."))]));
  renderMap();
}

/** Sites with lat/long labels on a plain equirectangular sketch (no tiles). */
function renderMap() {
  const sites = [...state.clusters.values()].filter((c) => c.location);
  const figure = $("#map");
  figure.hidden = sites.length === 0;
  $(".sites").classList.toggle("with-map", sites.length > 0);
  if (!sites.length) return;
  const W = 400, H = 240, pad = 30;
  const lats = sites.map((s) => s.location.lat), longs = sites.map((s) => s.location.long);
  const mid = (values) => (Math.min(...values) + Math.max(...values)) / 2;
  const midLat = mid(lats), midLong = mid(longs);
  // One scale for both axes (a degree of longitude shrinks with cos(latitude)), at least a
  // few kilometres across, so sites in one city neither overlap nor fill a continent.
  const shrink = Math.max(Math.cos((midLat * Math.PI) / 180), 0.1);
  const spanLong = Math.max((Math.max(...longs) - Math.min(...longs)) * shrink, 0.4);
  const spanLat = Math.max(Math.max(...lats) - Math.min(...lats), 0.2);
  const scale = Math.min((W - 2 * pad) / spanLong, (H - 2 * pad) / spanLat) / 1.15;
  const x = (long) => W / 2 + (long - midLong) * shrink * scale;
  const y = (lat) => H / 2 - (lat - midLat) * scale;
  const long0 = midLong - W / 2 / scale / shrink, long1 = midLong + W / 2 / scale / shrink;
  const lat0 = midLat - H / 2 / scale, lat1 = midLat + H / 2 / scale;
  const root = $("#map-svg");
  const nodes = [];
  const step = (a, b) => [0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 45].find((s) => (b - a) / s <= 6) || 90;
  for (const [lo, hi, vertical] of [[long0, long1, true], [lat0, lat1, false]]) {
    const s = step(lo, hi);
    for (let v = Math.ceil(lo / s) * s; v <= hi; v += s) {
      const label = `${Math.abs(v).toFixed(s < 0.1 ? 2 : s < 1 ? 1 : 0)}°${vertical ? (v < 0 ? "W" : "E") : (v < 0 ? "S" : "N")}`;
      if (vertical) {
        nodes.push(svg("line", { class: "grid", x1: x(v), x2: x(v), y1: 8, y2: H - 8 }));
        nodes.push(svg("text", { class: "grid-label", x: x(v) + 2, y: H - 10 }, label));
      } else {
        nodes.push(svg("line", { class: "grid", x1: 8, x2: W - 8, y1: y(v), y2: y(v) }));
        nodes.push(svg("text", { class: "grid-label", x: 10, y: y(v) - 2 }, label));
      }
    }
  }
  const colours = { healthy: "#1a7f37", degraded: "#9a6700", unreachable: "#cf222e", unknown: "#6e7781" };
  for (const site of sites) {
    const cx = x(site.location.long), cy = y(site.location.lat);
    if (state.matched.has(site.name)) nodes.push(svg("circle", { class: "halo", cx, cy, r: 10 }));
    const dot = svg("circle", { cx, cy, r: 6, fill: colours[healthOf(site)] || colours.unknown, "data-site": site.name });
    dot.append(svg("title", {}, `${site.name}: ${healthOf(site)}, ${site.podsTotal ?? "?"} pods`));
    nodes.push(dot, svg("text", { class: "site-name", x: cx + 9, y: cy + 4 }, site.name));
  }
  root.replaceChildren(...nodes);
}

// ---- releases and rollouts ----------------------------------------------------------

async function loadReleases() {
  state.releases = await api("GET", "/api/v1/releases");
  const body = $("#releases tbody");
  const rows = state.releases.map((r) =>
    h("tr", { "data-release": r.release, "data-namespace": r.namespace, "data-cluster": r.cluster },
      h("td", { class: "name" }, r.release),
      h("td", { class: "namespace" }, r.namespace),
      h("td", { class: "revision num" }, r.revision ?? "–"),
      h("td", { class: "chart" }, r.chart ? r.chart.name : "–"),
      h("td", { class: "chart-version" }, r.chart ? r.chart.version : "–"),
      h("td", { class: "cluster" }, r.cluster),
      h("td", { class: "status" }, h("span", { class: `badge ${r.state}`, title: r.reason || "" }, r.state)),
      h("td", {}, h("button", {
        type: "button", class: "small secondary", "data-history": "",
        onclick: () => showHistory(r).catch((e) => alert(e.message)),
      }, "History"))));
  body.replaceChildren(...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colSpan: 8 }, "No releases."))]));
  if (state.history) showHistory(state.history).catch(console.error);
}

/** A release's history on one cluster: every status it reported, newest first. */
async function showHistory(r) {
  state.history = r;
  const path = `/api/v1/releases/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.release)}/history?cluster=${encodeURIComponent(r.cluster)}`;
  const entries = await api("GET", path);
  const box = $("#history");
  $("h3", box).textContent = `${r.release} (${r.namespace}) on ${r.cluster}`;
  $("tbody", box).replaceChildren(...entries.reverse().map((s) =>
    h("tr", { "data-generation": s.generation },
      h("td", { class: "at" }, new Date(s.at).toLocaleString()),
      h("td", { class: "num" }, s.generation),
      h("td", { class: "action" }, s.action),
      h("td", {}, h("span", { class: `badge ${s.state}` }, s.state)),
      h("td", { class: "revision num" }, s.revision ?? "–"),
      h("td", { class: "chart" }, s.chart ? `${s.chart.name} ${s.chart.version}` : "–"),
      h("td", { class: "reason" }, s.reason || ""))));
  box.hidden = false;
}

async function loadCharts() {
  const charts = await api("GET", "/api/v1/charts");
  const kib = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`;
  const rows = charts.map((c) =>
    h("tr", { "data-chart": c.name, "data-version": c.version },
      h("td", { class: "name" }, c.name),
      h("td", { class: "version" }, c.version),
      h("td", {}, c.appVersion || "–"),
      h("td", { class: "num" }, kib(c.size)),
      h("td", {}, h("code", { title: c.digest }, c.digest.slice(0, 19))),
      h("td", {}, new Date(c.ingestedAt).toLocaleString())));
  $("#charts tbody").replaceChildren(...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colSpan: 6 }, "No charts yet."))]));
}

function trackRollout(result) {
  // The form that started it says when it is done.
  for (const form of document.querySelectorAll("form[data-request]")) {
    if (form.dataset.request !== result.id || !result.complete) continue;
    delete form.dataset.request;
    const s = result.summary;
    say(form, s.failed ? `${result.release}: failed on ${s.failed} of ${s.clusters} cluster(s); see Rollouts.`
      : `${result.release}: done on ${s.clusters} cluster(s).`, s.failed ? "error" : "ok");
  }
  // An event names only the clusters that changed: keep what is known of the others.
  const known = state.rollouts.get(result.id);
  if (known) result.clusters = { ...known.clusters, ...result.clusters };
  state.rollouts.delete(result.id);
  state.rollouts.set(result.id, result);
  loadRecord(result.id);
  while (state.rollouts.size > MAX_ROLLOUTS) state.rollouts.delete(state.rollouts.keys().next().value);
  renderRollouts();
}

/** The hub's newest rollouts, wherever they were started, with their requests' progress. */
async function loadRecentRollouts() {
  const records = await api("GET", "/api/v1/rollouts");
  for (const record of records.slice(0, MAX_ROLLOUTS).reverse()) {
    if (state.rollouts.has(record.id)) continue;
    state.records.set(record.id, record);
    try {
      trackRollout(await api("GET", `/api/v1/requests/${encodeURIComponent(record.id)}`));
    } catch (error) {
      console.error(error);
    }
  }
}

/** Reads a request's rollout record (waves, state), if it has one, and redraws. */
const loadRecord = (() => {
  const pending = new Map();
  return (id) => {
    clearTimeout(pending.get(id));
    pending.set(id, setTimeout(async () => {
      pending.delete(id);
      try {
        state.records.set(id, await api("GET", `/api/v1/rollouts/${encodeURIComponent(id)}`));
      } catch (error) {
        if (!state.records.has(id)) state.records.set(id, null);
      }
      renderRollouts();
    }, 200));
  };
})();

/** The rollout's own line and its buttons: pause, resume, abort, and a rollback once it ended. */
function rolloutControls(r, record) {
  if (!record) return null;
  const final = ["succeeded", "failed", "rolled-back", "aborted"].includes(record.state);
  const wave = Math.min(record.wave + 1, record.waves.length);
  const button = (label, action, cls) => h("button", {
    type: "button", class: `small ${cls || ""}`, "data-control": action,
    onclick: () => control(r, action).catch((e) => alert(e.message)),
  }, label);
  return h("div", { class: "rollout" },
    h("span", { class: `badge ${record.state}`, "data-rollout-state": record.state }, record.state),
    ` wave ${wave}/${record.waves.length}`,
    record.reason ? h("span", { class: "reason" }, record.reason) : null,
    h("ol", { class: "waves" }, record.waves.map((w, i) =>
      h("li", { class: i === record.wave && !final ? "current" : "" },
        h("code", {}, w.selector || "(the rest)"), `: ${w.clusters.join(", ")}`))),
    h("span", { class: "buttons" },
      record.state === "running" ? button("Pause", "pause", "secondary") : null,
      record.state === "paused" ? button("Resume", "resume", "secondary") : null,
      !final && record.state !== "rolling-back" ? button("Abort", "abort", "danger") : null,
      final && record.action !== "rollback" && record.state !== "rolled-back" ? button("Roll back", "rollback", "danger") : null));
}

/** Pause, resume or abort a rollout; or roll its release back on the clusters it targeted. */
async function control(r, action) {
  if (action === "rollback") {
    const path = `/api/v1/releases/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.release)}/rollback?wait=false`;
    trackRollout(await api("POST", path, { selector: r.selector }));
    return;
  }
  state.records.set(r.id, await api("POST", `/api/v1/rollouts/${encodeURIComponent(r.id)}/${action}`));
  renderRollouts();
}

function renderRollouts() {
  const items = [...state.rollouts.values()].reverse().map((r) => {
    const s = r.summary;
    const tally = r.error ? `refused: ${r.error.message}`
      : s.clusters === 0 && r.acceptedAt ? "no cluster matches"
      : `${s.done}/${s.clusters} done${s.failed ? `, ${s.failed} failed` : ""}`;
    const clusters = Object.entries(r.clusters).map(([name, p]) =>
      h("li", { "data-cluster": name },
        `${name} `, h("span", { class: `badge ${p.state}` }, p.state),
        p.revision ? ` revision ${p.revision}` : "",
        p.reason && p.state === "failed" ? h("span", { class: "reason" }, p.reason) : null));
    return h("li", { "data-request": r.id },
      h("span", { class: "title" }, `${r.action || "request"} ${r.release}`),
      h("code", {}, ` ${r.selector || "(all clusters)"}`),
      h("span", { class: "tally" }, tally),
      rolloutControls(r, state.records.get(r.id)),
      h("ul", {}, clusters));
  });
  $("#rollouts").replaceChildren(...(items.length ? items : [h("li", { class: "empty" }, "No rollouts yet.")]));
}

// ---- forms --------------------------------------------------------------------------

/** Shows, while a selector is typed, which clusters it matches — or what is wrong with it. */
function previewSelector(form, onMatch) {
  const input = form.elements.selector;
  const preview = $(".preview", form);
  const update = debounce(async () => {
    const selector = input.value;
    try {
      const matches = await api("GET", `/api/v1/clusters?selector=${encodeURIComponent(selector)}`);
      if (input.value !== selector) return;
      input.classList.remove("invalid");
      preview.className = "preview";
      const names = matches.map((c) => c.name).join(", ");
      preview.textContent = !matches.length ? "Matches no cluster"
        : selector.trim() ? `Matches ${names}`
        : `Empty selector: every cluster (${names})`;
      onMatch(new Set(matches.map((c) => c.name)));
    } catch (error) {
      if (input.value !== selector) return;
      input.classList.add("invalid");
      preview.className = "preview error";
      preview.textContent = error.message;
      onMatch(new Set());
    }
  }, 250);
  input.addEventListener("input", update);
  update();
}

/** The install form's preview: clusters with the same changes together, each object's diff. */
function renderPreview(preview) {
  const box = $("#dry-run");
  // A cluster with the same changes as an earlier one names it (`sameAs`), without its own.
  const groups = [];
  for (const c of preview.clusters) {
    const key = JSON.stringify([c.outcome, c.outcome === "offline" ? "" : c.reason, c.revision, c.nextRevision, c.objects, c.hooks]);
    const group = c.sameAs ? groups.find((g) => g.clusters[0].cluster === c.sameAs) : groups.find((g) => g.key === key);
    if (group) group.clusters.push(c);
    else groups.push({ key, clusters: [c] });
  }
  const marks = { create: "+", update: "~", delete: "-", unchanged: "=" };
  box.replaceChildren(
    h("p", { class: "title" }, `Preview of ${preview.action} ${preview.release}: nothing was changed.`),
    preview.note ? h("p", { class: "note" }, preview.note) : null,
    ...groups.map(({ clusters }) => {
      const c = clusters[0];
      const names = clusters.map((x) => x.cluster).join(", ");
      if (c.outcome !== "previewed") {
        return h("div", { class: `group ${c.outcome}`, "data-outcome": c.outcome },
          h("strong", {}, names), " ", h("span", { class: `badge ${c.outcome === "offline" ? "unreachable" : "failed"}` }, c.outcome),
          h("span", { class: "reason" }, c.reason || ""));
      }
      const changed = (c.objects || []).filter((o) => o.change !== "unchanged").length;
      const revisions = c.revision ? `revision ${c.revision} → ${c.nextRevision}` : `not installed → revision ${c.nextRevision}`;
      return h("div", { class: "group previewed", "data-outcome": "previewed" },
        h("strong", {}, names), ` ${revisions}, ${changed} object(s) change`,
        (c.hooks || []).map((hook) => h("div", { class: "hook" }, `hook ${hook}`)),
        h("ul", { class: "objects" }, (c.objects || []).map((o) =>
          h("li", { "data-object": o.object, "data-change": o.change },
            o.diff ? h("details", {}, h("summary", {}, `${marks[o.change]} ${o.object} (${o.change})`), h("pre", { class: "diff" }, o.diff))
              : `${marks[o.change]} ${o.object} (${o.change})`))));
    }));
  box.hidden = false;
}

async function installOrUpdate(form, action) {
  const f = form.elements;
  const release = f.release.value.trim(), namespace = f.namespace.value.trim();
  let chart;
  const file = f.chart.files[0];
  if (file) {
    const upload = new FormData();
    upload.append("chart", file);
    say(form, `Uploading ${file.name}…`);
    const entry = await api("POST", "/api/v1/charts", upload);
    chart = { name: entry.name, version: entry.version };
  } else if (action === "upgrade" || action === "preview") {
    const current = state.releases.find((r) => r.release === release && r.namespace === namespace && r.chart);
    if (!current) throw new Error("Choose a chart archive (.tgz): the release's current chart is not known here.");
    chart = { name: current.chart.name, version: current.chart.version };
  } else {
    throw new Error("Choose a chart archive (.tgz) to install.");
  }
  const body = { selector: f.selector.value, chart };
  if (f.values.value.trim()) body.values = f.values.value;
  const strategy = {};
  const waves = f.waves.value.split(";").map((w) => w.trim()).filter(Boolean);
  if (waves.length) strategy.waves = waves;
  if (f.maxUnavailable.value.trim()) strategy.maxUnavailable = f.maxUnavailable.value.trim();
  if (f.maxFailures.value.trim()) strategy.maxFailures = f.maxFailures.value.trim();
  if (f.rollbackOnFailure.checked) strategy.rollbackOnFailure = true;
  if (f.soak.value.trim()) strategy.soakSeconds = Number(f.soak.value.trim());
  if (Object.keys(strategy).length) body.strategy = strategy;
  if (action === "preview") {
    const installed = state.releases.some((r) => r.release === release && r.namespace === namespace && r.state !== "uninstalled");
    say(form, "Asking each matching cluster…");
    const { strategy: _, ...asked } = body;
    renderPreview(await api("POST", "/api/v1/previews", { action: installed ? "upgrade" : "install", release, namespace, ...asked }));
    say(form, "");
    return;
  }
  $("#dry-run").hidden = true;
  const result = action === "install"
    ? await api("POST", "/api/v1/releases?wait=false", { release, namespace, ...body })
    : await api("PUT", `/api/v1/releases/${encodeURIComponent(namespace)}/${encodeURIComponent(release)}?wait=false`, body);
  const n = result.summary.clusters;
  form.dataset.request = result.id;
  say(form, n ? `${action === "install" ? "Installing" : "Updating"} ${release} on ${n} cluster${n > 1 ? "s" : ""}…` : "No cluster matches the selector: nothing to do.", "ok");
  trackRollout(result);
}

async function deleteRelease(form) {
  const f = form.elements;
  const release = f.release.value.trim();
  let namespace = f.namespace.value.trim();
  if (!namespace) {
    const namespaces = [...new Set(state.releases.filter((r) => r.release === release).map((r) => r.namespace))];
    if (namespaces.length === 0) throw new Error(`Release ${release} is not installed on any cluster.`);
    if (namespaces.length > 1) throw new Error(`Release ${release} exists in namespaces ${namespaces.join(", ")}: fill in the namespace.`);
    namespace = namespaces[0];
  }
  const selector = encodeURIComponent(f.selector.value);
  const result = await api("DELETE", `/api/v1/releases/${encodeURIComponent(namespace)}/${encodeURIComponent(release)}?selector=${selector}&wait=false`);
  form.dataset.request = result.id;
  say(form, `Removing ${release} from ${result.summary.clusters} cluster(s)…`, "ok");
  trackRollout(result);
}

function wire(form, handler) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    say(form, "");
    try {
      await handler(event.submitter ? event.submitter.value : undefined);
    } catch (error) {
      say(form, error.message, "error");
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });
}

// ---- live updates -------------------------------------------------------------------

const refresh = {
  clusters: debounce(() => loadClusters().catch(console.error), 300),
  releases: debounce(() => loadReleases().catch(console.error), 300),
  charts: debounce(() => loadCharts().catch(console.error), 300),
};

function follow() {
  const events = new EventSource("/api/v1/events");
  const live = $("#live");
  const setLive = (on) => {
    live.className = `live ${on ? "on" : "off"}`;
    live.textContent = on ? "live" : "reconnecting…";
  };
  events.addEventListener("hello", () => {
    setLive(true);
    refresh.clusters();
    refresh.releases();
    refresh.charts();
  });
  events.onerror = () => setLive(false);
  events.addEventListener("cluster", (event) => {
    const update = JSON.parse(event.data);
    const known = state.clusters.get(update.name);
    if (!known) return refresh.clusters();
    Object.assign(known, update, { receivedAt: Date.now() });
    renderClusters();
  });
  events.addEventListener("release", () => refresh.releases());
  events.addEventListener("chart", () => refresh.charts());
  events.addEventListener("request", (event) => {
    trackRollout(JSON.parse(event.data));
    refresh.releases();
  });
  events.addEventListener("lagged", () => {
    refresh.clusters();
    refresh.releases();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const install = $("#install"), remove = $("#delete");
  wire(install, (action) => installOrUpdate(install, action || "install"));
  wire(remove, () => deleteRelease(remove));
  previewSelector(install, (names) => {
    state.matched = names;
    renderClusters();
  });
  previewSelector(remove, () => {});
  loadClusters().catch((e) => say(install, e.message, "error"));
  loadReleases().catch((e) => say(install, e.message, "error"));
  loadCharts().catch((e) => say(install, e.message, "error"));
  loadRecentRollouts().catch(console.error);
  follow();
  // Ages "last seen" and flips silent sites to unreachable without asking the server.
  setInterval(renderClusters, 5000);
  // A rollout moves between waves (and ends) without a request event: re-read open ones.
  setInterval(() => {
    for (const [id, record] of state.records) {
      if (record && !["succeeded", "failed", "rolled-back", "aborted"].includes(record.state)) loadRecord(id);
    }
  }, 2000);
});

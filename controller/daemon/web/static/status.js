// The netroot status page: labels and nodes from the daemon, kept live by /api/v1/stream.
// Everything from the network reaches the DOM as textContent, never as markup.
"use strict";

(function () {
  const ROW_LIMIT = 200; // rows rendered per expanded group: 10,000 nodes stay usable
  const STATES = ["lost", "stale", "unknown", "dhcp", "booting", "up"]; // problems first
  const OPEN_BY_DEFAULT = new Set(["lost", "stale"]);
  const CONTACT = new Set(["node.booted", "node.dhcp", "node.remounted", "node.current"]);
  const PREFIX = "org.netroot.";
  const RESYNC_MS = 60000; // last_seen moves without events (heartbeats): reread now and then

  window.netrootLoads = (window.netrootLoads || 0) + 1; // tests check the page never reloads

  const nodes = new Map(); // mac -> {mac, hostname, label, state, version, action, last_seen}
  let labels = [];
  let seq = 0; // the last event applied (or the snapshot's journal head)
  const userOpen = new Map(); // group key -> open, as the user left it
  let renderQueued = false;
  let labelsQueued = false;

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function ago(iso) {
    if (!iso) return "-";
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "-";
    return duration((Date.now() - t) / 1000) + " ago";
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) {
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
      return m ? h + "h" + m + "m" : h + "h";
    }
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    return h ? d + "d" + h + "h" : d + "d";
  }

  // A version id starts with its UTC creation time: 20261204T145500.123Z-0123abcd.
  function versionTime(version) {
    const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})\.(\d{3})Z-/.exec(version || "");
    if (!m) return null;
    return `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${m[7]}Z`;
  }

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // ---- labels ----

  async function loadLabels() {
    labels = await getJSON("/api/v1/labels");
    renderLabels();
  }

  function queueLabels() {
    if (labelsQueued) return;
    labelsQueued = true;
    setTimeout(() => {
      labelsQueued = false;
      loadLabels().catch(showError);
    }, 300); // one reread for a burst of image events
  }

  function renderLabels() {
    const body = $("labels").tBodies[0];
    const rows = labels.map((l) => {
      const tr = el("tr");
      tr.dataset.label = l.label;
      tr.append(el("td", l.label, "label"), el("td", l.active || "-", "mono active"));
      tr.append(el("td", l.active ? ago(versionTime(l.active)) : "-", "age"));
      const build = l.last_build;
      const td = el("td", "", "build");
      if (build) {
        td.append(el("span", build.result, "result-" + build.result));
        td.append(document.createTextNode(" " + ago(build.finished_at)));
        if (build.error) td.title = build.error;
      } else {
        td.textContent = "-";
      }
      tr.append(td, el("td", l.versions_kept, "kept"));
      return tr;
    });
    body.replaceChildren(...rows);
    const select = $("label");
    const chosen = select.value;
    const names = new Set(labels.map((l) => l.label));
    for (const n of nodes.values()) if (n.label) names.add(n.label);
    const options = [el("option", "every label")];
    options[0].value = "";
    for (const name of [...names].sort()) {
      const o = el("option", name);
      o.value = name;
      options.push(o);
    }
    select.replaceChildren(...options);
    select.value = names.has(chosen) ? chosen : "";
  }

  // ---- nodes ----

  async function loadNodes() {
    const snap = await getJSON("/status/nodes");
    nodes.clear();
    for (const n of snap.nodes) nodes.set(n.mac, n);
    seq = Math.max(seq, snap.seq);
    queueRender();
    return snap.seq;
  }

  function applyNodeEvent(envelope) {
    const data = envelope.data || {};
    if (!data.mac) return;
    const kind = envelope.type.slice(PREFIX.length);
    const node = nodes.get(data.mac) || { mac: data.mac, hostname: null, last_seen: null };
    node.state = data.state;
    if ("label" in data) node.label = data.label;
    if ("version" in data) node.version = data.version;
    node.action = data.action || null; // set exactly when stale
    if (data.hostname) node.hostname = data.hostname;
    if (CONTACT.has(kind)) node.last_seen = envelope.time;
    nodes.set(data.mac, node);
  }

  function onEvent(message) {
    const id = Number(message.lastEventId);
    if (id && id <= seq) return; // already in the snapshot
    let envelope;
    try {
      envelope = JSON.parse(message.data);
    } catch {
      return;
    }
    if (id) seq = id;
    document.body.dataset.seq = String(seq);
    const type = String(envelope.type || "");
    if (type.startsWith(PREFIX + "node.")) {
      applyNodeEvent(envelope);
      queueRender();
    } else if (type.startsWith(PREFIX + "image.")) {
      queueLabels();
    }
  }

  function filters() {
    const text = $("text").value.trim().toLowerCase();
    const states = new Set();
    for (const box of $("states").querySelectorAll("input")) if (box.checked) states.add(box.value);
    return { text, states, label: $("label").value };
  }

  function keep(node, f) {
    if (!f.states.has(node.state) && STATES.includes(node.state)) return false;
    if (f.label && node.label !== f.label) return false;
    if (!f.text) return true;
    return node.mac.includes(f.text) || (node.hostname || "").toLowerCase().includes(f.text);
  }

  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => {
      renderQueued = false;
      renderNodes();
    }, 200); // a burst of 10,000 stale events renders once
  }

  function isOpen(key, state, f) {
    if (userOpen.has(key)) return userOpen.get(key);
    return OPEN_BY_DEFAULT.has(state) || f.text !== "";
  }

  function group(key, summaryParts, open, cls) {
    const details = el("details", undefined, cls);
    details.dataset.key = key;
    details.open = open;
    const summary = el("summary");
    summary.append(...summaryParts);
    summary.addEventListener("click", () => userOpen.set(key, !details.open));
    details.append(summary);
    return details;
  }

  function countsLine(byState) {
    const span = el("span", undefined, "counts");
    for (const state of orderStates(byState)) {
      span.append(el("span", `${byState.get(state).length} ${state}`, "state-" + state));
    }
    return span;
  }

  function orderStates(byState) {
    const known = STATES.filter((s) => byState.has(s));
    const other = [...byState.keys()].filter((s) => !STATES.includes(s)).sort();
    return [...known, ...other];
  }

  function nodeRow(n) {
    const tr = el("tr");
    tr.dataset.mac = n.mac;
    tr.append(
      el("td", n.mac, "mono mac"),
      el("td", n.hostname || "-", "hostname"),
      el("td", n.state, "state state-" + n.state),
      el("td", n.version || "-", "mono version"),
      el("td", n.action || "-", "action"),
      el("td", ago(n.last_seen), "seen"),
    );
    return tr;
  }

  function nodeTable(list) {
    const table = el("table", undefined, "nodes");
    const head = el("tr");
    for (const h of ["MAC", "Hostname", "State", "Version", "Action", "Last seen"]) {
      head.append(el("th", h));
    }
    table.createTHead().append(head);
    const body = table.createTBody();
    for (const n of list.slice(0, ROW_LIMIT)) body.append(nodeRow(n));
    return table;
  }

  function renderNodes() {
    const f = filters();
    const byLabel = new Map(); // label -> state -> [node]
    let shown = 0;
    for (const n of nodes.values()) {
      if (!keep(n, f)) continue;
      shown += 1;
      const label = n.label || "";
      if (!byLabel.has(label)) byLabel.set(label, new Map());
      const states = byLabel.get(label);
      if (!states.has(n.state)) states.set(n.state, []);
      states.get(n.state).push(n);
    }
    const labelNames = [...byLabel.keys()].sort((a, b) =>
      a === "" ? 1 : b === "" ? -1 : a < b ? -1 : a > b ? 1 : 0,
    );
    const parts = [];
    for (const label of labelNames) {
      const states = byLabel.get(label);
      let count = 0;
      for (const list of states.values()) count += list.length;
      const key = "label:" + label;
      const title = el("span", label || "(no label)", "label");
      const outer = group(key, [title, el("span", ` ${count} nodes`), countsLine(states)],
        userOpen.has(key) ? userOpen.get(key) : true, "label-group");
      outer.dataset.label = label;
      outer.dataset.count = String(count);
      for (const state of orderStates(states)) {
        const list = states.get(state);
        const inner = group(`state:${label}:${state}`,
          [el("span", state, "state-" + state), el("span", ` (${list.length})`, "count")],
          isOpen(`state:${label}:${state}`, state, f), "state-group");
        inner.dataset.state = state;
        inner.dataset.count = String(list.length);
        if (inner.open) {
          list.sort((a, b) => (a.mac < b.mac ? -1 : a.mac > b.mac ? 1 : 0));
          inner.append(nodeTable(list));
          if (list.length > ROW_LIMIT) {
            inner.append(el("div", `${list.length - ROW_LIMIT} more \u2014 refine the filter`, "more"));
          }
        } else {
          // Rendered when opened: a collapsed group costs one line.
          inner.addEventListener("toggle", () => { if (inner.open) queueRender(); }, { once: true });
        }
        outer.append(inner);
      }
      parts.push(outer);
    }
    if (parts.length === 0) {
      parts.push(el("p", nodes.size ? "No node matches the filter." : "No node has reported yet."));
    }
    $("nodes").replaceChildren(...parts);
    const summary = summaryText(nodes.values());
    $("total").textContent = shown === nodes.size ? summary : `${summary} (${shown} shown)`;
    document.body.dataset.nodes = String(nodes.size);
    document.body.dataset.shown = String(shown);
  }

  function summaryText(all) {
    const counts = new Map();
    let n = 0;
    for (const node of all) {
      counts.set(node.state, (counts.get(node.state) || 0) + 1);
      n += 1;
    }
    const order = orderStates(counts);
    return `${n} ${n === 1 ? "node" : "nodes"}: ` + order.map((s) => `${counts.get(s)} ${s}`).join(", ");
  }

  // ---- the stream ----

  function follow(after) {
    const source = new EventSource(`/api/v1/stream?after=${after}`);
    const live = $("live");
    source.onopen = () => { live.textContent = "live"; live.className = "live open"; };
    source.onerror = () => {
      // The browser reconnects by itself, sending Last-Event-ID.
      live.textContent = source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting";
      live.className = "live closed";
    };
    source.onmessage = onEvent;
  }

  function showError(error) {
    const live = $("live");
    live.textContent = String(error.message || error);
    live.className = "live closed";
  }

  function setupFilters() {
    const states = $("states");
    for (const state of STATES) {
      const box = el("input");
      box.type = "checkbox";
      box.value = state;
      box.checked = true;
      const label = el("label");
      label.append(box, document.createTextNode(" " + state));
      states.append(label);
    }
    $("filters").addEventListener("input", queueRender);
    $("filters").addEventListener("submit", (e) => e.preventDefault());
  }

  async function start() {
    setupFilters();
    await loadLabels();
    const after = await loadNodes();
    renderLabels(); // the label select now knows the nodes' labels too
    follow(after);
    setInterval(() => {
      loadNodes().catch(showError);
      renderLabels(); // ages move on
    }, RESYNC_MS);
  }

  document.addEventListener("DOMContentLoaded", () => { start().catch(showError); });
})();

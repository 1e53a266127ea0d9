// lanshare dashboard: one page, live over one EventSource (/api/v1/events).
// Every list is filtered, sorted and paged by the node; this script only
// draws what the API returns. DOM is built with textContent (no innerHTML).
"use strict";

const CSRF = document.querySelector('meta[name="lanshare-csrf"]').content;
const CATEGORIES = ["audio", "video", "image", "text", "document", "archive", "other"];
const PAGE = 100;
const $ = (id) => document.getElementById(id);

const state = {
  view: "overview",
  status: null,
  peers: [],
  transfers: { downloads: [], uploads: [] },
  lib: { q: "", category: "", sort: "name", order: "asc", offset: 0, total: 0 },
  history: { q: "", event: "" },
};

// ---- helpers ---------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  n = Number(n) || 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + u[i];
}
const rate = (r) => (r > 0 ? bytes(r) + "/s" : "–");

function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Math.ceil(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function ago(iso) {
  const t = Date.parse(iso);
  if (!t) return "–";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return Math.floor(s) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return new Date(t).toLocaleDateString();
}

const fmt = new Intl.NumberFormat();
const plural = (n, one, many) => fmt.format(n) + " " + (n === 1 ? one : many);

function toast(msg, kind) {
  const t = h("div", { class: "toast " + (kind || "") }, msg);
  $("toasts").append(t);
  while ($("toasts").children.length > 3) $("toasts").firstChild.remove();
  setTimeout(() => t.classList.add("gone"), 4500);
  setTimeout(() => t.remove(), 5000);
}

async function api(method, path, body) {
  const opts = { method, headers: { "X-Lanshare-CSRF": CSRF }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/api/v1/" + path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { /* empty body */ }
  if (!r.ok) {
    if (r.status === 401) { location.reload(); }
    throw new Error((data && data.error) || r.status + " " + r.statusText);
  }
  return data;
}

function fill(tbody, rows, emptyEl, emptyText) {
  tbody.replaceChildren(...rows);
  if (emptyEl) {
    emptyEl.hidden = rows.length > 0;
    if (emptyText !== undefined) emptyEl.textContent = emptyText;
  }
}

function progress(done, size, kind) {
  const pct = size > 0 ? Math.min(100, (done * 100) / size) : 0;
  return h("div", { class: "progress " + (kind || ""), role: "progressbar", "aria-valuenow": pct.toFixed(0), "aria-valuemin": "0", "aria-valuemax": "100" },
    h("div", { class: "bar", style: null, "data-pct": pct.toFixed(1) }));
}
// The strict CSP forbids inline style attributes; widths are set from script.
function sizeBars(root) {
  for (const b of root.querySelectorAll(".bar[data-pct]")) b.style.width = b.dataset.pct + "%";
}

// ---- navigation ------------------------------------------------------------

function show(view) {
  if (!document.getElementById("view-" + view)) view = "overview";
  state.view = view;
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + view;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === view);
  if (view === "library") loadLibrary();
  if (view === "history") loadHistory();
}
window.addEventListener("hashchange", () => show(location.hash.slice(1)));

// ---- overview --------------------------------------------------------------

function renderStatus(s) {
  state.status = s;
  $("me-name").textContent = s.name;
  $("me-id").textContent = s.id.slice(0, 8);
  document.title = s.name + " · lanshare";
  $("ov-name").textContent = s.name;
  $("ov-id").textContent = s.id;
  $("ov-listen").textContent = s.listen;
  $("ov-home").textContent = s.home;
  $("ov-addrs").replaceChildren(...(s.addresses.length ? s.addresses.map((a) => h("code", { class: "addr" }, a)) : [h("span", { class: "muted" }, "none")]));
  $("ov-files").textContent = plural(s.shared_contents, "file", "files");
  $("ov-bytes").textContent = bytes(s.shared_bytes);
  $("ov-peers").textContent = fmt.format(s.peers_online);
  $("badge-peers").textContent = s.peers_online || "";
  $("ov-discovery").replaceChildren(...s.discovery.map((d) =>
    h("li", { class: d.active ? "on" : "off" },
      h("span", { class: "pill " + (d.active ? "ok" : "idle") }, d.active ? "on" : "off"),
      h("strong", {}, d.kind), " ", h("span", { class: "muted" }, d.detail || (d.active ? "" : "not configured")))));
  $("warnings").replaceChildren(...s.warnings.map((w) => h("div", { class: "warning", role: "alert" }, h("strong", {}, "Heads up: "), w)));
}

// ---- peers -----------------------------------------------------------------

function renderPeers(peers) {
  state.peers = peers;
  peers.sort((a, b) => (b.online - a.online) || a.name.localeCompare(b.name));
  const rows = peers.map((p) => h("tr", { class: p.online ? "" : "offline", "data-peer": p.name },
    h("td", {}, h("strong", {}, p.name), h("div", { class: "sub mono" }, p.id.slice(0, 8))),
    h("td", {}, h("span", { class: "pill " + (p.online ? "ok" : "idle") }, p.online ? "online" : "offline")),
    h("td", { class: "hide-s" }, ...p.addrs.slice(0, 3).map((a) => h("code", { class: "addr" }, a))),
    h("td", { title: p.last_seen }, p.online ? "now" : ago(p.last_seen)),
    h("td", { class: "hide-s" }, p.found_via.join(", ")),
    h("td", { class: "num" }, fmt.format(p.contents)),
    h("td", { class: "num" }, rate(p.up_rate) + " / " + rate(p.down_rate))));
  fill($("peers-rows"), rows, $("peers-empty"));
}

// ---- library ---------------------------------------------------------------

function renderChips(counts) {
  const total = counts.reduce((a, c) => a + c.count, 0);
  const chip = (cat, label, n) => h("button", {
    class: "chip" + (state.lib.category === cat ? " active" : ""), "data-cat": cat || "all", type: "button",
    onclick: () => { state.lib.category = cat; state.lib.offset = 0; loadLibrary(); },
  }, label, h("span", { class: "count" }, fmt.format(n)));
  $("cats").replaceChildren(chip("", "All", total), ...counts.map((c) => chip(c.category, c.category[0].toUpperCase() + c.category.slice(1), c.count)));
}

function holders(v) {
  const parts = [];
  if (v.complete) parts.push(v.complete + " complete");
  if (v.partial) parts.push(v.partial + " partial");
  return h("span", { title: v.holders.map((x) => x.name + " (" + x.chunks + "/" + x.total + ")").join("\n") }, parts.join(", ") || "–");
}

// A download not over yet: waiting for a holder and paused on a full disk included.
function isRunning(d) {
  return d.state === "downloading" || d.state === "starting" || d.state === "waiting" || d.state === "paused";
}

function downloading(id) {
  return state.transfers.downloads.some((d) => d.id === id && isRunning(d));
}

function libraryRow(v) {
  let action;
  if (v.local) action = h("span", { class: "pill ok" }, "here");
  else if (downloading(v.id)) action = h("span", { class: "pill busy" }, "fetching");
  else action = h("button", { class: "fetch small primary", type: "button", "data-id": v.id, onclick: (e) => startFetch(v, e.target) }, "Fetch");
  return h("tr", { "data-id": v.id, "data-name": v.name },
    h("td", { class: "name" }, h("span", { class: "cat-dot " + v.category, "aria-hidden": "true" }, "\u25a0\u00a0"), v.name,
      v.names.length > 1 ? h("span", { class: "muted" }, " (+" + (v.names.length - 1) + " names)") : null,
      v.comment ? h("div", { class: "sub show-s" }, v.comment) : null),
    h("td", { class: "num" }, bytes(v.size)),
    h("td", { class: "hide-s" }, v.category),
    h("td", { class: "hide-s comment" }, v.comment),
    h("td", { class: "num" }, holders(v)),
    h("td", { class: "act" }, action));
}

let libSeq = 0;
async function loadLibrary() {
  const l = state.lib;
  const seq = ++libSeq;
  const qs = new URLSearchParams({ q: l.q, sort: l.sort, order: l.order, offset: l.offset, limit: PAGE });
  if (l.category) qs.set("category", l.category);
  let page;
  try { page = await api("GET", "contents?" + qs); } catch (e) { toast(e.message, "bad"); return; }
  if (seq !== libSeq) return; // a newer request is on its way
  l.total = page.total;
  if (l.offset > 0 && l.offset >= page.total) { l.offset = Math.max(0, page.total - PAGE); return loadLibrary(); }
  renderChips(page.categories);
  const empty = l.q || l.category ? "Nothing matches. Try another search or category." : "Nothing offered yet: files that peers share appear here.";
  fill($("library-rows"), page.items.map(libraryRow), $("library-empty"), empty);
  $("range").textContent = page.total ? fmt.format(l.offset + 1) + "–" + fmt.format(l.offset + page.items.length) + " of " + fmt.format(page.total) : "";
  document.querySelector(".pager").hidden = page.total <= PAGE;
  $("prev").disabled = l.offset === 0;
  $("next").disabled = l.offset + PAGE >= page.total;
  $("badge-library").textContent = "";
  $("ov-library").textContent = fmt.format(page.categories.reduce((a, c) => a + c.count, 0));
  for (const th of document.querySelectorAll("#library th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === l.sort);
    th.classList.toggle("desc", th.dataset.sort === l.sort && l.order === "desc");
  }
  document.body.dataset.libraryReady = String(seq);
}

async function startFetch(v, btn) {
  btn.disabled = true;
  btn.textContent = "Starting…";
  try {
    await api("POST", "fetch", { query: v.id });
    toast("Downloading " + v.name + " — follow it in Transfers", "ok");
  } catch (e) {
    toast("Cannot fetch " + v.name + ": " + e.message, "bad");
    btn.disabled = false;
    btn.textContent = "Fetch";
  }
}

let searchTimer = 0;
$("search").addEventListener("input", (e) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { state.lib.q = e.target.value.trim(); state.lib.offset = 0; loadLibrary(); }, 120);
});
$("prev").addEventListener("click", () => { state.lib.offset = Math.max(0, state.lib.offset - PAGE); loadLibrary(); });
$("next").addEventListener("click", () => { state.lib.offset += PAGE; loadLibrary(); });
for (const th of document.querySelectorAll("#library th[data-sort]")) {
  th.addEventListener("click", () => {
    const l = state.lib;
    if (l.sort === th.dataset.sort) l.order = l.order === "asc" ? "desc" : "asc";
    else { l.sort = th.dataset.sort; l.order = th.dataset.sort === "name" || th.dataset.sort === "category" ? "asc" : "desc"; }
    l.offset = 0;
    loadLibrary();
  });
}

// ---- transfers -------------------------------------------------------------

function stateLabel(d) {
  switch (d.state) {
    case "starting": return h("span", { class: "pill busy" }, "starting");
    case "downloading": return h("span", { class: "pill busy" }, "downloading");
    case "done": return h("span", { class: "pill ok" }, "done");
    case "cancelled": return h("span", { class: "pill idle" }, "cancelled");
    case "waiting": return h("span", { class: "pill idle", title: d.detail || "" }, "waiting");
    case "paused": return h("span", { class: "pill bad", title: d.detail || "" }, "paused");
    default: return h("span", { class: "pill bad", title: d.detail || "" }, "failed");
  }
}

function downloadCard(d) {
  const running = isRunning(d);
  return h("div", { class: "card transfer download " + d.state, "data-id": d.id, "data-transfer": d.transfer },
    h("div", { class: "t-head" },
      h("strong", { class: "t-name" }, d.name), stateLabel(d),
      running ? h("button", { class: "small ghost danger cancel", type: "button", onclick: () => cancel(d) }, "Cancel") : null),
    progress(d.done, d.size, d.state),
    h("div", { class: "t-meta" },
      h("span", { class: "pct" }, (d.size ? ((d.done * 100) / d.size).toFixed(1) : "0") + "%"),
      h("span", {}, bytes(d.done) + " of " + bytes(d.size)),
      running ? h("span", {}, rate(d.rate)) : h("span", {}, "took " + duration(d.secs)),
      running ? h("span", {}, "ETA " + duration(d.eta_secs)) : null,
      running ? h("span", {}, plural(d.active_peers, "peer", "peers") + " now") : null),
    d.peers.length ? h("div", { class: "t-peers" }, ...d.peers.map((p) => h("span", { class: "peer-bytes" }, p.peer.split("@")[0], " ", h("b", {}, bytes(p.bytes))))) : null,
    h("div", { class: "sub" }, ["failed", "waiting", "paused"].includes(d.state) && d.detail ? d.detail : d.verification));
}

function uploadCard(u) {
  return h("div", { class: "card transfer upload", "data-id": u.id },
    h("div", { class: "t-head" }, h("strong", { class: "t-name" }, u.name), h("span", { class: "pill busy" }, "to " + u.peer.split("@")[0])),
    progress(u.sent, u.size, "upload"),
    h("div", { class: "t-meta" },
      h("span", { class: "pct" }, (u.size ? Math.min(100, (u.sent * 100) / u.size).toFixed(1) : "0") + "%"),
      h("span", {}, bytes(u.sent) + " of " + bytes(u.size)),
      h("span", {}, rate(u.rate)),
      h("span", { class: "muted" }, u.peer)));
}

async function cancel(d) {
  try {
    await api("DELETE", "transfers/" + d.transfer);
    toast("Cancelled " + d.name + " for good; its partial file is deleted", "ok");
  } catch (e) { toast(e.message, "bad"); }
}

function renderTransfers(t) {
  const before = new Set(state.transfers.downloads.filter((d) => isRunning(d)).map((d) => d.id));
  state.transfers = t;
  const dl = $("downloads"), ul = $("uploads");
  dl.replaceChildren(...t.downloads.map(downloadCard));
  ul.replaceChildren(...t.uploads.map(uploadCard));
  sizeBars(dl); sizeBars(ul);
  $("downloads-empty").hidden = t.downloads.length > 0;
  $("uploads-empty").hidden = t.uploads.length > 0;
  const running = t.downloads.filter((d) => isRunning(d)).length;
  const n = running + t.uploads.length;
  $("badge-transfers").textContent = n || "";
  $("ov-transfers").textContent = fmt.format(n);
  $("ov-transfers-sub").textContent = running + " down, " + t.uploads.length + " up";
  for (const d of t.downloads) {
    if (d.state === "done" && before.has(d.id)) toast("Downloaded " + d.name, "ok");
    if (d.state === "failed" && before.has(d.id)) toast(d.name + ": " + d.detail, "bad");
  }
  // The library's buttons follow the downloads.
  if (state.view === "library") {
    for (const tr of $("library-rows").children) {
      const b = tr.querySelector("button.fetch");
      if (b && downloading(tr.dataset.id)) b.replaceWith(h("span", { class: "pill busy" }, "fetching"));
    }
  }
}

// ---- shares ----------------------------------------------------------------

function categorySelect(value, extra) {
  return h("select", extra || {}, h("option", { value: "" }, "by extension"),
    ...CATEGORIES.map((c) => h("option", { value: c, selected: c === value }, c)));
}

function shareRow(r) {
  if (!r.editable) {
    return h("tr", { class: "fixed" }, h("td", {}, h("code", {}, r.path)), h("td", { class: "muted" }, r.origin), h("td", { class: "muted" }, "by extension"), h("td", {}));
  }
  const comment = h("input", { value: r.comment, maxlength: "1024", "aria-label": "Comment" });
  const cat = categorySelect(r.category || "", { "aria-label": "Category" });
  const save = async () => {
    try {
      await api("PATCH", "shares", { path: r.path, comment: comment.value, category: cat.value || null });
      toast("Saved " + r.path, "ok");
    } catch (e) { toast(e.message, "bad"); }
  };
  const stop = async () => {
    if (!confirm("Stop sharing " + r.path + "? The files stay on disk.")) return;
    try {
      await api("DELETE", "shares?" + new URLSearchParams({ path: r.path }));
      toast("Stopped sharing " + r.path, "ok");
      loadShares();
    } catch (e) { toast(e.message, "bad"); }
  };
  return h("tr", { "data-path": r.path }, h("td", {}, h("code", {}, r.path)), h("td", {}, comment), h("td", {}, cat),
    h("td", { class: "act" }, h("button", { class: "small", type: "button", onclick: save }, "Save"), " ",
      h("button", { class: "small ghost danger", type: "button", onclick: stop }, "Stop sharing")));
}

function renderShares(s) {
  const editing = document.activeElement && $("shares-rows").contains(document.activeElement);
  if (!editing) $("shares-rows").replaceChildren(...s.roots.map(shareRow));
  $("shares-total").textContent = plural(s.files, "file", "files") + ", " + bytes(s.bytes);
  const hs = s.hashing;
  $("hashing").hidden = !hs;
  if (hs) {
    $("hashing-name").textContent = hs.path;
    $("hashing-bar").style.width = (hs.size ? (hs.done * 100) / hs.size : 0).toFixed(1) + "%";
    $("hashing-sub").textContent = bytes(hs.done) + " of " + bytes(hs.size) + (hs.queued ? "; " + plural(hs.queued, "file", "files") + " waiting" : "");
  }
}

async function loadShares() {
  try { renderShares(await api("GET", "shares")); } catch (e) { toast(e.message, "bad"); }
}

$("share-category").replaceWith(categorySelect("", { id: "share-category" }));
$("share-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const path = $("share-path").value.trim();
  try {
    const r = await api("POST", "shares", { path, comment: $("share-comment").value, category: $("share-category").value || null });
    toast("Sharing " + r.path + "; peers see it once it is indexed", "ok");
    $("share-path").value = "";
    $("share-comment").value = "";
    loadShares();
  } catch (err) { toast(err.message, "bad"); }
});

// ---- history ---------------------------------------------------------------

function historyStatus(status) {
  if (status === "ok") return h("span", { class: "pill ok" }, "ok");
  const why = status.replace(/^failed: /, "");
  if (/cancel/i.test(why)) return h("span", { class: "pill idle", title: why }, "cancelled");
  return h("span", { class: "pill bad", title: why }, "failed");
}

function historyRow(r) {
  return h("tr", { class: r.event },
    h("td", { title: r.time }, new Date(r.time).toLocaleString()),
    h("td", { class: "dir-col" }, h("span", { class: "dir " + r.event, title: r.event }, r.event === "download" ? "↓" : "↑")),
    h("td", { class: "name" }, r.file),
    h("td", { class: "num" }, bytes(r.bytes)),
    h("td", { class: "hide-s muted" }, r.peers.split(",").map((p) => p.split("@")[0]).join(", ")),
    h("td", { class: "num hide-s" }, r.throughput),
    h("td", {}, historyStatus(r.status)));
}

function historyMatches(r) {
  const q = state.history.q.toLowerCase();
  if (state.history.event && r.event !== state.history.event) return false;
  return !q || [r.file, r.peers, r.id, r.status].some((f) => f.toLowerCase().includes(q));
}

async function loadHistory() {
  const qs = new URLSearchParams({ q: state.history.q, limit: 500 });
  if (state.history.event) qs.set("event", state.history.event);
  try {
    const rows = await api("GET", "history?" + qs);
    fill($("history-rows"), rows.map(historyRow), $("history-empty"));
  } catch (e) { toast(e.message, "bad"); }
}

let historyTimer = 0;
$("history-q").addEventListener("input", (e) => {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(() => { state.history.q = e.target.value.trim(); loadHistory(); }, 150);
});
$("history-event").addEventListener("change", (e) => { state.history.event = e.target.value; loadHistory(); });

// ---- live events -----------------------------------------------------------

let contentsTimer = 0;
function connect() {
  const es = new EventSource("/api/v1/events");
  const on = (name, f) => es.addEventListener(name, (e) => f(JSON.parse(e.data)));
  es.onopen = () => { $("live").className = "live on"; $("live-text").textContent = "live"; };
  es.onerror = () => { $("live").className = "live off"; $("live-text").textContent = "reconnecting"; };
  on("status", renderStatus);
  on("peers", renderPeers);
  on("transfers", renderTransfers);
  on("shares", renderShares);
  on("contents", () => {
    clearTimeout(contentsTimer);
    contentsTimer = setTimeout(() => { if (state.view === "library" || !state.lib.total) loadLibrary(); }, 50);
  });
  on("log", (r) => {
    if (state.view !== "history" || !historyMatches(r)) return;
    $("history-rows").prepend(historyRow(r));
    $("history-empty").hidden = true;
  });
  on("resync", () => { loadLibrary(); loadShares(); if (state.view === "history") loadHistory(); });
}

show(location.hash.slice(1) || "overview");
connect();
setInterval(() => { if (state.view === "peers") renderPeers(state.peers); }, 5000);

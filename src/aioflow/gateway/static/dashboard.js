"use strict";
const RUN_STATUSES = ["pending", "running", "paused", "stopped", "completed", "failed"];
const VERTEX_STATUSES = ["running", "completed", "failed", "cancelled", "parked", "retrying", "waiting", "queued"];
const TERMINAL = new Set(["completed", "failed", "stopped"]);
const WILD = "\u0001"; // placeholder for an unknown foreach key in address templates
const S = {flow: null, run: null, def: null, example: null, cursors: [""], nextCursor: null, filter: "",
  runsKey: null, runKey: null, runData: null, vboxes: [], ticks: 0, view: "timeline", countsKey: null};
const TOKEN_KEY = "aioflow.token";

// ---------- DOM helpers (text is always inserted as text nodes; no innerHTML) ----------
const $ = (id) => document.getElementById(id);
function append(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false) continue;
    el.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  return append(el, kids);
}
const SVGNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  return append(el, kids);
}
function fill(el, ...kids) { el.replaceChildren(); return append(el, kids); }
const safeStatus = (st, allowed) => (allowed.includes(st) ? st : "unknown");
const badge = (st) => h("span", {class: "badge st-" + safeStatus(st, RUN_STATUSES.concat(VERTEX_STATUSES))}, st == null ? "?" : String(st));

let msgTimer = null;
function say(text, isErr) {
  const m = $("msg");
  m.className = isErr ? "err" : "ok";
  m.textContent = text;
  m.title = text;
  clearTimeout(msgTimer);
  msgTimer = setTimeout(() => { m.textContent = ""; }, 7000);
}
const errText = (e) => (e && typeof e === "object" && e.error)
  ? String(e.error) + (e.detail ? ": " + String(e.detail) : "") : String(e);

// ---------- API token (issue 9): asked for on 401, kept for this tab only ----------
function token() { try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; } }
function showAuth() {
  const t = token();
  $("auth").hidden = !t;
}
function askToken(why) {
  $("tokenWhy").textContent = why;
  $("tokenBox").hidden = false;
  $("tokenInput").focus();
}
function useToken(ev) {
  ev.preventDefault();
  const t = $("tokenInput").value.trim();
  if (!t) return;
  try { sessionStorage.setItem(TOKEN_KEY, t); } catch (_) { /* storage disabled: nothing kept */ }
  $("tokenInput").value = "";
  $("tokenBox").hidden = true;
  showAuth();
  reloadAll();
}
function forgetToken() {
  try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
  showAuth();
  say("token forgotten for this tab", false);
}

async function api(method, path, body, headers) {
  const opt = {method, headers: Object.assign({}, headers || {})};
  const t = token();
  if (t) opt.headers.Authorization = "Bearer " + t;
  if (body !== undefined) opt.body = body;
  let resp;
  try { resp = await fetch(path, opt); }
  catch (e) { throw {error: "network", detail: String(e)}; }
  const text = await resp.text();
  let data;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!resp.ok) {
    const err = (data && typeof data === "object") ? data : {error: "http_" + resp.status, detail: String(text)};
    err.httpStatus = resp.status;
    if (resp.status === 401) {
      askToken(t ? "The gateway refused this token (" + errText(err) + ")." : "The gateway needs an API token.");
    } else if (resp.status === 403) {
      err.detail = (err.detail ? err.detail + " — " : "") + "this token's scope is too weak for that";
    }
    throw err;
  }
  return data;
}
const enc = encodeURIComponent;
const flowPath = (f) => "/flow/" + enc(f);
const hashFor = (flow, run) => "#/flow/" + enc(flow) + (run ? "/run/" + enc(run) : "");

// ---------- formatting ----------
function fmtTime(t) {
  if (typeof t !== "number") return "—";
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
    p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
}
function fmtDur(a, b) {
  if (typeof a !== "number") return "";
  const sec = (typeof b === "number" ? b : Date.now() / 1000) - a;
  if (sec < 0) return "";
  if (sec < 1) return Math.round(sec * 1000) + " ms";
  if (sec < 120) return sec.toFixed(1) + " s";
  if (sec < 7200) return Math.round(sec / 60) + " min";
  return (sec / 3600).toFixed(1) + " h";
}
function unbytes(v) {
  if (Array.isArray(v)) return v.map(unbytes);
  if (v && typeof v === "object") {
    const ks = Object.keys(v);
    if (ks.length === 1 && ks[0] === "$bytes" && typeof v.$bytes === "string") {
      let raw;
      try { raw = atob(v.$bytes); } catch (_) { return "<bytes " + v.$bytes.slice(0, 40) + ">"; }
      try {
        const txt = new TextDecoder("utf-8", {fatal: true}).decode(Uint8Array.from(raw, (c) => c.charCodeAt(0)));
        if (!/[\u0000-\u0008\u000e-\u001f]/.test(txt)) return "b'" + txt + "'";
      } catch (_) { /* not UTF-8 text */ }
      return "<" + raw.length + " bytes: " + v.$bytes.slice(0, 40) + (v.$bytes.length > 40 ? "…" : "") + ">";
    }
    const o = {};
    for (const k of ks) o[k] = unbytes(v[k]);
    return o;
  }
  return v;
}
const pretty = (v) => { const t = JSON.stringify(unbytes(v), null, 2); return t === undefined ? String(v) : t; };

// ---------- DAG layout + SVG drawing ----------
function layout(dag) {
  const verts = Array.isArray(dag.vertices) ? dag.vertices : [];
  const names = verts.map((v) => String(v.name));
  const known = new Set(names);
  const edges = (dag.edges || []).filter((e) => known.has(e.from) && known.has(e.to));
  const out = new Map(names.map((n) => [n, []]));
  for (const e of edges) out.get(e.from).push(e.to);
  // iterative DFS from the entries first; edges to a vertex on the stack are back edges
  const state = new Map(), back = new Set();
  for (const r of [...(dag.entries || []).filter((n) => known.has(n)), ...names]) {
    if (state.has(r)) continue;
    const stack = [[r, 0]];
    state.set(r, 1);
    while (stack.length) {
      const top = stack[stack.length - 1], succ = out.get(top[0]);
      if (top[1] < succ.length) {
        const n = succ[top[1]++];
        if (!state.has(n)) { state.set(n, 1); stack.push([n, 0]); }
        else if (state.get(n) === 1) back.add(top[0] + "\u0000" + n);
      } else { state.set(top[0], 2); stack.pop(); }
    }
  }
  const isBack = (e) => back.has(e.from + "\u0000" + e.to);
  const fwd = edges.filter((e) => !isBack(e));
  // longest-path layering (Kahn order over the acyclic part)
  const indeg = new Map(names.map((n) => [n, 0]));
  const preds = new Map(names.map((n) => [n, []]));
  for (const e of fwd) { indeg.set(e.to, indeg.get(e.to) + 1); preds.get(e.to).push(e.from); }
  const layer = new Map(names.map((n) => [n, 0]));
  const queue = names.filter((n) => indeg.get(n) === 0);
  while (queue.length) {
    const n = queue.shift();
    for (const e of fwd) if (e.from === n) {
      layer.set(e.to, Math.max(layer.get(e.to), layer.get(n) + 1));
      indeg.set(e.to, indeg.get(e.to) - 1);
      if (indeg.get(e.to) === 0) queue.push(e.to);
    }
  }
  const nL = names.length ? Math.max(...layer.values()) + 1 : 0;
  const layers = Array.from({length: nL}, () => []);
  for (const n of names) layers[layer.get(n)].push(n);
  // one barycenter pass to reduce crossings
  const rank = new Map();
  const setRanks = (L) => L.forEach((n, i) => rank.set(n, i - (L.length - 1) / 2));
  layers.forEach(setRanks);
  for (let l = 1; l < nL; l++) {
    const bc = new Map(layers[l].map((n) => {
      const p = preds.get(n);
      return [n, p.length ? p.reduce((a, m) => a + rank.get(m), 0) / p.length : rank.get(n)];
    }));
    layers[l].sort((a, b) => bc.get(a) - bc.get(b));
    setRanks(layers[l]);
  }
  // geometry: layers are columns, left to right
  const BH = 44, VG = 16, HG = 64, PAD = 12;
  const boxW = (v) => Math.max(84, Math.ceil(String(v.name).length * 7.6) + 26, v.kind !== "node" ? 96 : 0);
  const byName = new Map(verts.map((v) => [String(v.name), v]));
  const pos = new Map();
  const maxRows = Math.max(1, ...layers.map((L) => L.length));
  const height = maxRows * (BH + VG) - VG;
  let x = PAD + 8;
  for (const L of layers) {
    const w = Math.max(...L.map((n) => boxW(byName.get(n))));
    const colH = L.length * (BH + VG) - VG;
    L.forEach((n, i) => pos.set(n, {x, y: PAD + (height - colH) / 2 + i * (BH + VG), w, h: BH}));
    x += w + HG;
  }
  const hasBack = edges.some(isBack) || edges.some((e) => layer.get(e.from) >= layer.get(e.to));
  return {pos, edges, isBack, layer, width: x - HG + PAD + 8, height: height + 2 * PAD + (hasBack ? 44 : 0)};
}

let svgSeq = 0;
function nestedPrefixes(v, prefix) {
  const k = v.kind, n = String(v.name);
  if (k === "subdag" && v.dag) return [{label: "subdag " + n, dag: v.dag, prefix: prefix + n + "[]/"}];
  if (k === "foreach" && v.dag) return [{label: "foreach " + n + " (per item)", dag: v.dag, prefix: prefix + n + "[" + WILD + "]/"}];
  if (k === "branch" && v.branches && typeof v.branches === "object") {
    const conds = Array.isArray(v.conditions) ? v.conditions : Object.keys(v.branches);
    return conds.filter((c) => v.branches[c]).map((c) =>
      ({label: "branch " + n + " when \u201c" + c + "\u201d", dag: v.branches[c], prefix: prefix + n + "[" + c + "]/"}));
  }
  return [];
}

function drawDag(dag, prefix, depth) {
  const wrap = h("div", {});
  const L = layout(dag);
  if (!L.pos.size) return append(wrap, [h("div", {class: "muted"}, "(empty graph)")]);
  const id = "arr" + (++svgSeq);
  const svg = s("svg", {width: L.width, height: L.height, viewBox: "0 0 " + L.width + " " + L.height, role: "img"});
  const marker = (mid, color) => s("marker", {id: mid, viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"}, s("path", {d: "M0,0 L10,5 L0,10 z", fill: color}));
  svg.appendChild(s("defs", {}, marker(id, "#8c959f"), marker(id + "f", "#bf8700"), marker(id + "b", "#a475f9")));
  for (const e of L.edges) {
    const a = L.pos.get(e.from), b = L.pos.get(e.to);
    const loop = L.isBack(e) || L.layer.get(e.from) >= L.layer.get(e.to);
    let d;
    if (loop) {
      const x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2 + (e.from === e.to ? 14 : 0), y2 = b.y + b.h;
      const low = Math.max(y1, y2) + 34;
      d = `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2 + 1}`;
    } else {
      const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x - 1, y2 = b.y + b.h / 2, dx = Math.max(24, (x2 - x1) / 2);
      d = `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
    }
    const cls = "edge" + (e.data === false ? " ctl" : "") + (e.forward ? " fwd" : "") + (loop ? " back" : "");
    const mk = e.forward ? id + "f" : loop ? id + "b" : id;
    svg.appendChild(s("path", {class: cls, d, "marker-end": "url(#" + mk + ")"},
      s("title", {}, e.from + " \u2192 " + e.to + (e.data === false ? " (control)" : " (data)") + (e.forward ? " forward" : "") + (loop ? " back edge" : ""))));
  }
  const nestedBox = h("div", {});
  const detailsFor = new Map();
  const entries = new Set(dag.entries || []), exits = new Set(dag.exits || []);
  for (const v of dag.vertices) {
    const n = String(v.name), p = L.pos.get(n), compound = v.kind !== "node";
    const tmpl = prefix + n;
    const rect = s("rect", {class: "vbox" + (compound ? " compound" : ""), x: p.x, y: p.y, width: p.w, height: p.h, rx: 6});
    const title = s("title", {});
    const baseTip = n + "\nkind: " + v.kind + "\nretries: " + (v.retries ?? 0) + "\ntimeout: " +
      (v.timeout == null ? "none" : v.timeout + " s") + (v.aggregate ? "\naggregate: yes" : "") +
      (v.kind === "branch" && Array.isArray(v.conditions) ? "\nconditions: " + v.conditions.join(", ") : "");
    title.textContent = baseTip;
    const g = s("g", {class: "v" + (compound ? " compound" : "")}, title, rect);
    if (compound) {
      const kl = v.kind === "branch" && Array.isArray(v.conditions) ? "BRANCH \u00d7" + v.conditions.length : String(v.kind).toUpperCase();
      g.appendChild(s("text", {class: "vkind", x: p.x + p.w / 2, y: p.y + 15, "text-anchor": "middle"}, kl));
      g.appendChild(s("text", {class: "vname", x: p.x + p.w / 2, y: p.y + 33, "text-anchor": "middle"}, n));
      g.addEventListener("click", () => {
        const ds = detailsFor.get(n) || [];
        ds.forEach((det) => { det.open = true; });
        if (ds[0]) ds[0].scrollIntoView({behavior: "smooth", block: "nearest"});
      });
    } else {
      g.appendChild(s("text", {class: "vname", x: p.x + p.w / 2, y: p.y + p.h / 2 + 4.5, "text-anchor": "middle"}, n));
    }
    if (entries.has(n)) g.appendChild(s("circle", {class: "entry", cx: p.x - 6, cy: p.y + p.h / 2, r: 4}));
    if (exits.has(n)) g.appendChild(s("circle", {class: "exit", cx: p.x + p.w + 6, cy: p.y + p.h / 2, r: 4}));
    svg.appendChild(g);
    S.vboxes.push({rect, title, baseTip, tmpl, compound, base: "vbox" + (compound ? " compound" : "")});
    for (const sub of nestedPrefixes(v, prefix)) {
      const det = h("details", {class: "nested", open: depth < 1 ? true : null},
        h("summary", {}, sub.label), drawDag(sub.dag, sub.prefix, depth + 1));
      nestedBox.appendChild(det);
      if (!detailsFor.has(n)) detailsFor.set(n, []);
      detailsFor.get(n).push(det);
    }
  }
  return append(wrap, [h("div", {class: "dagwrap"}, svg), nestedBox]);
}

const escRe = (t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
function matchStatus(tmpl, vertices) {
  if (!tmpl.includes(WILD)) {
    const v = vertices[tmpl];
    return v && typeof v === "object" ? {st: v.status, tip: ["status: " + v.status, "attempts: " + (v.attempts ?? "?"), ...waitTip(v)].filter(Boolean).join("\n")} : null;
  }
  const re = new RegExp("^" + tmpl.split(WILD).map(escRe).join(".*?") + "$");
  const counts = {};
  for (const [addr, v] of Object.entries(vertices)) {
    if (v && typeof v === "object" && re.test(addr)) counts[v.status] = (counts[v.status] || 0) + 1;
  }
  const sts = Object.keys(counts);
  if (!sts.length) return null;
  const st = ["failed", "running", "retrying", "waiting", "queued", "parked", "cancelled", "completed"]
    .find((o) => counts[o]) || sts[0];
  return {st, tip: sts.map((k) => k + ": " + counts[k]).join("\n")};
}
function colourDag() {
  const vertices = (S.runData && S.runData.vertices && typeof S.runData.vertices === "object") ? S.runData.vertices : null;
  for (const b of S.vboxes) {
    let m = vertices ? matchStatus(b.tmpl, vertices) : null;
    if (!m && vertices && b.compound) m = matchStatus(b.tmpl + "[" + WILD + "]/" + WILD, vertices);
    b.rect.setAttribute("class", b.base + (m ? " vs-" + safeStatus(m.st, VERTEX_STATUSES) : ""));
    b.title.textContent = b.baseTip + (m ? "\n\n" + m.tip : "");
  }
}

// ---------- flows ----------
async function loadFlows() {
  try {
    const data = await api("GET", "/flows");
    const flows = (data && Array.isArray(data.flows)) ? data.flows : [];
    const list = $("flows");
    if (!flows.length) { fill(list, h("span", {class: "muted"}, "no flows registered")); return; }
    fill(list, flows.map((f) => h("a", {href: hashFor(f.name), "data-flow": f.name},
      h("span", {}, String(f.name)), h("small", {title: "partitions"}, "\u00d7" + (f.partitions ?? "?")))));
    markFlows();
  } catch (e) { fill($("flows"), h("span", {class: "muted"}, "error: " + errText(e))); }
}
function markFlows() {
  for (const a of $("flows").querySelectorAll("a")) a.classList.toggle("sel", a.getAttribute("data-flow") === S.flow);
}
const schedText = (x) => String(x.name) + " (" +
  (x.cron ? "cron " + x.cron + " " + x.timezone : "every " + x.every + " s") +
  (x.paused ? ", paused)" : ", next " + x.next_tick_at + ")");
async function loadDef() {
  const flow = S.flow;
  S.vboxes = [];
  fill($("dag"), "loading…");
  try {
    const def = await api("GET", flowPath(flow));
    if (flow !== S.flow) return;
    S.def = def;
    S.vboxes = [];
    showSchema(def);
    const dag = def && def.dag;
    if (!dag || !Array.isArray(dag.vertices)) { fill($("dag"), "flow has no DAG"); return; }
    const scheds = Array.isArray(def.schedules) ? def.schedules : [];
    fill($("dag"), h("div", {class: "legend"},
      "● entry  ○ exit  · solid = data edge, dashed = control only, amber = forward, purple = back edge · dashed purple boxes are subdag/branch/foreach (click to expand)"),
      scheds.length ? h("div", {class: "legend", id: "schedules"}, "schedules: " + scheds.map(schedText).join(" · ")) : null,
      drawDag(dag, "", 0));
    colourDag();
  } catch (e) { if (flow === S.flow) fill($("dag"), "error: " + errText(e)); }
}

// ---------- runs list ----------
async function refreshRuns() {
  if (!S.flow) return "stop";
  const flow = S.flow, cursor = S.cursors[S.cursors.length - 1], filter = S.filter;
  const q = new URLSearchParams({limit: "20"});
  if (filter) q.set("status", filter);
  if (cursor) q.set("cursor", cursor);
  let data;
  try { data = await api("GET", flowPath(flow) + "/runs?" + q); }
  catch (e) {
    if (flow === S.flow) fill($("runs"), h("span", {class: "muted"}, "error: " + errText(e)));
    return "same";
  }
  if (flow !== S.flow || filter !== S.filter || cursor !== S.cursors[S.cursors.length - 1]) return "same";
  S.nextCursor = data && data.next_cursor ? String(data.next_cursor) : null;
  $("older").disabled = !S.nextCursor;
  $("newer").disabled = S.cursors.length <= 1;
  $("pageInfo").textContent = "page " + S.cursors.length;
  const key = JSON.stringify(data);
  if (key === S.runsKey) { markRuns(); return "same"; }
  S.runsKey = key;
  const runs = (data && Array.isArray(data.runs)) ? data.runs : [];
  if (!runs.length) { fill($("runs"), h("span", {class: "muted"}, filter ? "no " + filter + " runs" : "no runs yet")); return "changed"; }
  fill($("runs"), h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "run"), h("th", {}, "status"), h("th", {}, "created"), h("th", {}, "took"))),
    h("tbody", {}, runs.map((r) => h("tr", {class: "click", "data-run": r.run_id,
      onclick: () => { location.hash = hashFor(flow, r.run_id); }},
      h("td", {class: "id"}, h("a", {href: hashFor(flow, r.run_id)}, String(r.run_id))),
      h("td", {}, badge(r.status)), h("td", {}, fmtTime(r.created)),
      h("td", {class: "muted"}, r.ended == null ? (TERMINAL.has(r.status) ? "" : "…") : fmtDur(r.created, r.ended)))))));
  markRuns();
  return "changed";
}

// counts by status over the flow's latest runs (the API has no status index to count all)
const COUNT_WINDOW = 200;
async function refreshCounts() {
  const flow = S.flow;
  if (!flow) return;
  let data;
  try { data = await api("GET", flowPath(flow) + "/runs?limit=" + COUNT_WINDOW); } catch (_) { return; }
  if (flow !== S.flow) return;
  const runs = (data && Array.isArray(data.runs)) ? data.runs : [];
  const c = {};
  for (const r of runs) c[r.status] = (c[r.status] || 0) + 1;
  const key = JSON.stringify(c) + (data && data.next_cursor ? "+" : "");
  if (key === S.countsKey) return;
  S.countsKey = key;
  fill($("counts"), runs.length ? [
    h("span", {class: "muted"}, (data.next_cursor ? "latest " + runs.length + " runs:"
      : runs.length === 1 ? "1 run:" : "all " + runs.length + " runs:")),
    RUN_STATUSES.filter((st) => c[st]).map((st) => h("button", {class: "badge countbtn st-" + st, "data-status": st,
      title: "show only " + st + " runs", onclick: () => setFilter(st)}, st + " " + c[st]))] : []);
}
function setFilter(st) {
  $("filter").value = st;
  S.filter = st; S.cursors = [""]; S.runsKey = null;
  fill($("runs"), h("span", {class: "muted"}, "loading…"));
  runsPoll.kick();
}
function markRuns() {
  for (const tr of $("runs").querySelectorAll("tr[data-run]")) tr.classList.toggle("sel", tr.getAttribute("data-run") === S.run);
}

// ---------- run detail ----------
async function refreshRun() {
  if (!S.flow || !S.run) return "stop";
  const flow = S.flow, run = S.run;
  let data;
  try { data = await api("GET", flowPath(flow) + "/run/" + enc(run)); }
  catch (e) {
    if (flow !== S.flow || run !== S.run) return;
    S.runKey = null; S.runData = null; colourDag();
    fill($("secRun"), h("h2", {}, "Run ", h("span", {class: "mono"}, run)), h("div", {class: "err-head"}, errText(e)));
    return e && e.httpStatus === 404 ? "stop" : "same";
  }
  if (flow !== S.flow || run !== S.run) return "same";
  const key = JSON.stringify(data);
  const done = data && TERMINAL.has(data.status) ? "stop" : null;
  if (key === S.runKey) { updateDuration(); return done || "same"; }
  S.runKey = key;
  S.runData = data;
  renderRun(data);
  colourDag();
  if (done) runsPoll.kick();  // the list shows the new status at once
  return done || "changed";
}
function updateDuration() {
  const el = $("runDur"), d = S.runData;
  if (!el || !d || d.ended != null) return;
  el.textContent = fmtDur(d.created, null) + " (so far)";
  if (S.view === "timeline" && $("runView")) fill($("runView"), timeline(d, vertsOf(d)));  // running bars grow
}
function vertsOf(d) {
  const verts = (d.vertices && typeof d.vertices === "object") ? Object.entries(d.vertices) : [];
  return verts.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}
async function action(verb) {
  const flow = S.flow, run = S.run;
  if (verb === "stop" && !confirm("Stop run " + run + "?")) return;
  try {
    const r = await api("POST", flowPath(flow) + "/run/" + enc(run) + "/" + verb);
    say(verb + ": run is now " + (r && r.status), false);
  } catch (e) { say(verb + " failed — " + errText(e), true); }
  S.runKey = null;
  S.runsKey = null;
  runPoll.kick();
  runsPoll.kick();
}
function renderRun(d) {
  const st = d.status;
  const btn = (verb, label, enabled, cls) => h("button", {class: cls || null, disabled: !enabled, onclick: () => action(verb)}, label);
  const verts = vertsOf(d);
  const parts = [
    h("h2", {}, "Run ", h("span", {class: "mono"}, String(d.run_id ?? S.run)), badge(st), h("span", {class: "grow"}),
      btn("pause", "Pause", st === "running" || st === "pending"),
      btn("resume", "Resume", st === "paused"),
      btn("stop", "Stop", !TERMINAL.has(st), "danger")),
    h("dl", {class: "meta"},
      h("dt", {}, "flow"), h("dd", {}, String(d.flow ?? S.flow)),
      ...(d.parent ? [h("dt", {}, "parent run"), h("dd", {id: "runParent"}, runLink(d.parent))] : []),
      h("dt", {}, "created"), h("dd", {}, fmtTime(d.created)),
      h("dt", {}, "ended"), h("dd", {}, d.ended == null ? "—" : fmtTime(d.ended)),
      h("dt", {}, "duration"), h("dd", {id: "runDur"}, d.ended == null ? fmtDur(d.created, null) + " (so far)" : fmtDur(d.created, d.ended))),
  ];
  if (d.error && typeof d.error === "object") {
    const er = d.error;
    parts.push(h("div", {class: "err-head"}, "Failed in ", h("code", {}, String(er.vertex ?? "?")),
      er.attempts != null ? " after " + er.attempts + " attempt" + (er.attempts === 1 ? "" : "s") : "",
      " — " + String(er.type ?? "Error") + ": " + String(er.message ?? "")));
    if (er.traceback) parts.push(h("pre", {class: "err"}, String(er.traceback)));
  } else if (d.error != null) {
    parts.push(h("div", {class: "err-head"}, "Error"), h("pre", {class: "err"}, pretty(d.error)));
  }
  if ("result" in d) parts.push(h("div", {class: "mt8"}, h("strong", {}, "Result")), h("pre", {}, pretty(d.result)));
  const tab = (view, label) => h("button", {class: "tab" + (S.view === view ? " sel" : ""), id: "tab-" + view,
    onclick: () => { S.view = view; renderRun(S.runData); }}, label);
  parts.push(h("div", {class: "tabs"}, tab("timeline", "Timeline"), tab("table", "Vertices"),
    h("span", {class: "muted"}, "(" + verts.length + ")")));
  parts.push(h("div", {id: "runView"}, S.view === "timeline" ? timeline(d, verts) : vertexTable(verts)));
  fill($("secRun"), parts);
}
function vertexTable(verts) {
  return verts.length ? h("table", {id: "vtable"},
    h("thead", {}, h("tr", {}, h("th", {}, "address"), h("th", {}, "status"), h("th", {}, "attempts"),
      h("th", {}, "queued"), h("th", {}, "ran"), h("th", {}, "waits for"))),
    h("tbody", {}, verts.map(([addr, v]) => {
      const t = vtimes(v || {});
      return h("tr", {"data-addr": addr},
        h("td", {class: "id"}, addr), h("td", {}, badge(v && v.status)),
        h("td", {}, String(v && v.attempts != null ? v.attempts : "")),
        h("td", {class: "muted"}, t.qw == null ? "" : fmtSpan(t.qw)),
        h("td", {class: "muted"}, t.started == null ? "" : fmtDur(t.started, t.ended)),
        h("td", {class: "waits"}, waitsFor(v || {})));
    }))) : h("div", {class: "muted"}, "no vertex has started yet");
}

// what a waiting vertex waits for: its child run (a call) and its deadline (a wait's
// timeout, a sleep's end), as the state gives them
const runLink = (rid) => h("a", {href: hashFor(String(rid).split(".")[0], String(rid)), class: "mono"}, String(rid));
function waitsFor(v) {
  const out = [];
  if (v.child) out.push("child run ", runLink(v.child));
  if (typeof v.deadline === "number" && !(v.status && v.status !== "waiting")) {
    out.push((out.length ? ", until " : "until ") + fmtTime(v.deadline));
  }
  return out;
}
function waitTip(v) {
  return [v.child ? "child run: " + v.child : null,
    typeof v.deadline === "number" && v.status === "waiting" ? "waits until: " + fmtTime(v.deadline) : null];
}

// ---------- timeline (Gantt) of a run's vertices, from started/ended/queued/queue_wait ----------
const TIMELINE_ROWS = 300;
const num = (x) => (typeof x === "number" && isFinite(x) ? x : null);
function vtimes(v) {
  const started = num(v.started), ended = num(v.ended), qw0 = num(v.queue_wait);
  let queued = num(v.queued);
  if (queued == null && started != null && qw0 != null) queued = started - qw0;
  const qw = qw0 != null ? qw0 : (queued != null && started != null ? Math.max(0, started - queued) : null);
  return {started, ended, queued, qw};
}
function fmtSpan(sec) {
  if (sec < 1) return (sec * 1000).toFixed(sec < 0.01 ? 1 : 0) + " ms";
  if (sec < 120) return sec.toFixed(sec < 10 ? 2 : 1) + " s";
  return (sec / 60).toFixed(1) + " min";
}
function timeline(d, verts) {
  const rows = verts.map(([addr, v]) => ({addr, v: v || {}, t: vtimes(v || {})}))
    .filter((r) => r.t.started != null || r.t.queued != null);
  if (!rows.length) {
    return h("div", {id: "timeline", class: "muted mt8"}, verts.length
      ? "no per-vertex timings in this run's state (this server does not record them)"
      : "no vertex has started yet");
  }
  const now = Date.now() / 1000, live = !TERMINAL.has(d.status);
  const first = (r) => (r.t.queued != null ? r.t.queued : r.t.started);
  const waiting = (r) => live && r.t.started == null && r.t.queued != null;  // queued, not started yet
  const last = (r) => (r.t.ended != null ? r.t.ended
    : r.t.started != null && live && r.v.status === "running" ? now
      : r.t.started != null ? r.t.started : waiting(r) ? now : r.t.queued);
  rows.sort((a, b) => (first(a) - first(b)) || (a.addr < b.addr ? -1 : 1));
  const t0 = rows.reduce((m, r) => Math.min(m, first(r)), Infinity);
  let t1 = rows.reduce((m, r) => Math.max(m, last(r)), -Infinity);
  const hidden = Math.max(0, rows.length - TIMELINE_ROWS);
  rows.length = Math.min(rows.length, TIMELINE_ROWS);  // a wide foreach: the first ones
  if (!(t1 > t0)) t1 = t0 + 0.001;
  const LW = Math.min(320, Math.max(110, 16 + 7 * rows.reduce((m, r) => Math.max(m, r.addr.length), 0)));
  const avail = ($("secRun") && $("secRun").clientWidth) || 800;  // fit the panel
  const W = Math.max(240, avail - LW - 90), RH = 22, TOP = 24, span = t1 - t0;
  const x = (t) => LW + ((t - t0) / span) * W;
  const height = TOP + rows.length * RH + 6;
  const svg = s("svg", {class: "gantt", width: LW + W + 60, height, viewBox: "0 0 " + (LW + W + 60) + " " + height, role: "img"});
  const steps = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];
  const step = steps.find((st) => span / st <= 8) || 7200;
  for (let k = 0; k * step <= span * 1.0001; k++) {
    const gx = x(t0 + k * step);
    svg.appendChild(s("line", {class: "grid", x1: gx, x2: gx, y1: TOP - 6, y2: height - 4}));
    svg.appendChild(s("text", {class: "tick", x: gx, y: TOP - 10, "text-anchor": "middle"}, k ? "+" + fmtSpan(k * step) : "0"));
  }
  rows.forEach((r, i) => {
    const y = TOP + i * RH, st = safeStatus(r.v.status, VERTEX_STATUSES), att = r.v.attempts || 0;
    const tip = [r.addr, "status: " + r.v.status, "attempts: " + att,
      r.t.qw != null ? "queue wait: " + fmtSpan(r.t.qw) : null,
      r.t.started != null ? "started: +" + fmtSpan(r.t.started - t0) : null,
      r.t.started != null && r.t.ended != null ? "ran: " + fmtSpan(r.t.ended - r.t.started) : null,
      att > 1 ? "retried: times are those of the last attempt" : null, ...waitTip(r.v)].filter(Boolean).join("\n");
    const g = s("g", {class: "trow" + (att > 1 ? " retried" : "") + (st === "failed" ? " failed" : ""), "data-addr": r.addr},
      s("title", {}, tip),
      s("text", {class: "tlabel", x: LW - 8, y: y + 15, "text-anchor": "end"}, r.addr));
    const qEnd = r.t.started != null ? r.t.started : waiting(r) ? now : null;
    if (r.t.queued != null && qEnd != null && qEnd > r.t.queued) {
      g.appendChild(s("rect", {class: "tq", x: x(r.t.queued), y: y + 6, width: Math.max(1, x(qEnd) - x(r.t.queued)), height: 10}));
    }
    if (r.t.started != null) {
      const bx = x(r.t.started), bw = Math.max(2, x(last(r)) - bx);
      g.appendChild(s("rect", {class: "tb ts-" + st, x: bx, y: y + 3, width: bw, height: 16, rx: 2}));
      const mark = (st === "failed" ? "\u2715 " : "") + (att > 1 ? "\u27f3" + att : "");
      if (mark) g.appendChild(s("text", {class: "tmark" + (st === "failed" ? " bad" : ""), x: bx + bw + 4, y: y + 15}, mark.trim()));
    }
    svg.appendChild(g);
  });
  return h("div", {id: "timeline", class: "mt8"},
    h("div", {class: "legend"}, "pale = waiting in the queue · solid = running (last attempt) · \u27f3N = N attempts · \u2715 = failed · span " + fmtSpan(span)),
    h("div", {class: "dagwrap"}, svg),
    hidden ? h("div", {class: "muted"}, hidden + " later vertices not drawn (see Vertices)") : null);
}

// ---------- start form ----------
// a typed flow's input schema: shown, an example pre-filled (unless the user wrote
// something), and checked before sending (schema.js)
const inputSchema = () => (S.def && S.def.input_schema && typeof S.def.input_schema === "object" ? S.def.input_schema : null);
function showSchema(def) {
  const schema = def && def.input_schema && typeof def.input_schema === "object" ? def.input_schema : null;
  const body = $("body"), cur = body.value.trim(), untouched = !cur || cur === "{}" || cur === S.example;
  $("schemaBox").hidden = !schema;
  fill($("schema"), schema ? schemaText(schema) : "");
  if (!schema) {
    if (S.example && cur === S.example) body.value = "{}";
    S.example = null;
    return;
  }
  S.example = JSON.stringify(schemaExample(schema), null, 2);
  if (untouched) body.value = S.example;
}
function inputErrors(head, errs) {
  return h("div", {id: "inputErrors", class: "mt8"}, h("div", {class: "err-head"}, head),
    h("ul", {class: "errs"}, errs.slice(0, 50).map((e) => h("li", {},
      h("code", {}, e.loc || "(input)"), " " + String(e.msg)))));
}
// pydantic's errors (a 422's detail) as the checker's: loc joined with "."
const serverErrors = (detail) => detail.map((e) => ({
  loc: Array.isArray(e && e.loc) ? e.loc.map(String).join(".") : "",
  msg: e && e.msg != null ? e.msg : JSON.stringify(e)}));
async function startRun() {
  const flow = S.flow, text = $("body").value, isJson = $("isJson").checked, out = $("startOut");
  if (isJson && text.trim()) {
    let value;
    try { value = JSON.parse(text); } catch (e) { fill(out, h("pre", {class: "err"}, "invalid JSON: " + e.message)); return; }
    const schema = inputSchema();
    const errs = schema ? schemaCheck(schema, value) : [];
    if (errs.length) { fill(out, inputErrors("the input does not match the flow's input type; not sent", errs)); return; }
  }
  const b = $("startBtn");
  b.disabled = true;
  fill(out, h("div", {class: "muted mt8"}, "starting…"));
  let data, ok = true;
  try {
    data = await api("POST", flowPath(flow), isJson ? (text.trim() || "null") : text,
      {"Content-Type": isJson ? "application/json" : "application/octet-stream"});
  } catch (e) { data = e; ok = false; }
  b.disabled = false;
  if (flow !== S.flow) return;
  const rid = data && typeof data === "object" && data.run_id;
  if (!ok && data && data.error === "invalid_input" && Array.isArray(data.detail)) {
    fill(out, inputErrors("the gateway refused the input (422 invalid_input)", serverErrors(data.detail)));
    return;
  }
  fill(out, ok && rid
    ? h("div", {class: "formrow"}, "started ", h("a", {href: hashFor(flow, String(rid)), class: "mono"}, String(rid)))
    : h("pre", {class: "err"}, errText(data)));
  S.runsKey = null;
  runsPoll.kick();
  if (ok && rid) location.hash = hashFor(flow, String(rid));  // watch it live
}

// ---------- health, routing, polling ----------
async function loadHealth() {
  const el = $("health");
  try {
    const d = await api("GET", "/healthz");
    const up = !!(d && d.ok);
    fill(el, h("span", {class: "dot " + (up ? "up" : "down")}), up ? "healthy" : "unhealthy",
      d && "redis" in d ? " · redis " + (d.redis === "full" ? "full" : d.redis ? "ok" : "down") : "");
  } catch (e) { fill(el, h("span", {class: "dot down"}), "gateway unreachable"); }
}
function parseHash() {
  const p = location.hash.replace(/^#\/?/, "").split("/").map((x) => { try { return decodeURIComponent(x); } catch (_) { return x; } });
  if (p[0] === "flow" && p[1]) return {flow: p[1], run: p[2] === "run" && p[3] ? p[3] : null};
  return {flow: null, run: null};
}
function route() {
  const {flow, run} = parseHash();
  const flowChanged = flow !== S.flow, runChanged = flowChanged || run !== S.run;
  S.flow = flow;
  S.run = run;
  markFlows();
  $("empty").hidden = !!flow;
  $("secDag").hidden = !flow;
  $("split").hidden = !flow;
  if (flowChanged) {
    S.def = null; S.cursors = [""]; S.nextCursor = null; S.runsKey = null;
    $("flowName").textContent = flow || "";
    $("schemaBox").hidden = true;
    fill($("runs"), h("span", {class: "muted"}, "loading…"));
    fill($("startOut"));
    fill($("counts"));
    S.countsKey = null;
    if (flow) { loadDef(); runsPoll.kick(); } else runsPoll.stop();
    document.title = flow ? "aioflow · " + flow : "aioflow dashboard";
  }
  if (runChanged) {
    S.runKey = null; S.runData = null;
    colourDag();
    markRuns();
    fill($("secRun"), h("span", {class: "muted"}, run ? "loading run…" : "Select a run to see its state."));
    if (run) runPoll.kick(); else runPoll.stop();
  }
}
// Each poller runs again soon after a change and backs off while nothing changes;
// the open run's poller stops once the run is finished.
function poller(fn, min, max) {
  const p = {timer: null, delay: min, busy: false, again: false};
  const schedule = (ms) => { clearTimeout(p.timer); p.timer = setTimeout(go, ms); };
  async function go() {
    p.timer = null;
    if (document.visibilityState !== "visible") return;  // visibilitychange kicks it again
    if (p.busy) { p.again = true; return; }
    p.busy = true;
    let r = "same";
    try { r = await fn(); } catch (e) { console.warn("poll failed", e); } finally { p.busy = false; }
    if (p.again) { p.again = false; p.delay = min; schedule(0); return; }
    if (r === "stop") return;
    p.delay = r === "changed" ? min : Math.min(max, Math.round(p.delay * 1.6));
    schedule(p.delay);
  }
  p.kick = () => { p.delay = min; schedule(0); };
  p.stop = () => { clearTimeout(p.timer); p.timer = null; };
  return p;
}
const runPoll = poller(refreshRun, 300, 5000);
const runsPoll = poller(async () => {
  const r = await refreshRuns();
  if (r === "changed" || S.ticks++ % 5 === 0) await refreshCounts();
  return r;
}, 700, 10000);
const bgPoll = poller(async () => {
  await loadHealth();
  await loadFlows();
  return "same";
}, 15000, 15000);
function reloadAll() {
  S.runsKey = null; S.runKey = null; S.countsKey = null;
  loadFlows();
  loadHealth();
  if (S.flow && !S.def) loadDef();
  runsPoll.kick();
  runPoll.kick();
}

for (const st of RUN_STATUSES) $("filter").appendChild(h("option", {value: st}, st));
$("filter").addEventListener("change", () => {
  setFilter($("filter").value);
});
$("older").addEventListener("click", () => { if (S.nextCursor) { S.cursors.push(S.nextCursor); S.runsKey = null; runsPoll.kick(); } });
$("newer").addEventListener("click", () => { if (S.cursors.length > 1) { S.cursors.pop(); S.runsKey = null; runsPoll.kick(); } });
$("reloadFlows").addEventListener("click", loadFlows);
$("startBtn").addEventListener("click", startRun);
window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") { runsPoll.kick(); if (S.run) runPoll.kick(); bgPoll.kick(); }
});
$("tokenForm").addEventListener("submit", useToken);
$("forgetToken").addEventListener("click", forgetToken);
showAuth();
route();
bgPoll.kick();

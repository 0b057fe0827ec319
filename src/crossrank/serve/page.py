"""``GET /``: one self-contained page (no external assets) to try the service by hand.

Type a query and either search the index (when the server has one: first-stage and reranked top N side by side)
or paste candidates, one per line (input order vs reranked order). Scores, rank moves and timings are shown.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>crossrank</title>
<style>
  :root { --fg:#1d232a; --muted:#6b7480; --line:#dde2e8; --accent:#2f6fde; --up:#1b8a3a; --down:#c0392b; }
  * { box-sizing: border-box; }
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
         margin: 0 auto; max-width: 1200px; padding: 20px; }
  h1 { font-size: 20px; margin: 0 0 4px; } .sub { color: var(--muted); margin-bottom: 16px; }
  fieldset { border: 1px solid var(--line); border-radius: 8px; padding: 12px; margin: 0 0 12px; }
  label { display: block; font-weight: 600; margin: 6px 0 4px; }
  input[type=text], input[type=password], input[type=number], textarea { width: 100%; padding: 7px 9px;
         border: 1px solid var(--line); border-radius: 6px; font: inherit; }
  textarea { min-height: 140px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
  .row { display: flex; gap: 12px; flex-wrap: wrap; align-items: end; } .row > div { flex: 1; min-width: 120px; }
  button { background: var(--accent); color: #fff; border: 0; border-radius: 6px; padding: 8px 18px; font: inherit;
           cursor: pointer; } button:disabled { opacity: .6; cursor: wait; }
  .modes label { display: inline; font-weight: normal; margin-right: 16px; }
  .cols { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
  @media (max-width: 800px) { .cols { grid-template-columns: 1fr; } }
  table { width: 100%; border-collapse: collapse; } th, td { text-align: left; padding: 6px; vertical-align: top;
          border-bottom: 1px solid var(--line); } th { font-size: 12px; color: var(--muted); font-weight: 600; }
  td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
  .up { color: var(--up); } .down { color: var(--down); } .muted { color: var(--muted); }
  .timing { color: var(--muted); font-size: 13px; margin: 4px 0 8px; min-height: 1.2em; }
  .err { color: var(--down); white-space: pre-wrap; } .title { font-weight: 600; }
</style>
</head>
<body>
<h1>crossrank</h1>
<div class="sub" id="model">cross-encoder reranking</div>
<fieldset>
  <div class="modes" id="modes">
    <label><input type="radio" name="mode" value="search" id="mode-search"> search the index</label>
    <label><input type="radio" name="mode" value="paste" id="mode-paste" checked> rerank pasted candidates</label>
  </div>
  <label for="query">Query</label>
  <input type="text" id="query" placeholder="what causes earthquakes" autofocus>
  <div id="paste-box">
    <label for="cands">Candidates, one per line</label>
    <textarea id="cands" placeholder="Plates slip along faults and release stored strain.&#10;Sourdough bread uses a starter."></textarea>
  </div>
  <div class="row" id="search-box" style="display:none">
    <div><label for="k">K (candidates)</label><input type="number" id="k" value="100" min="1"></div>
    <div><label for="n">N (results)</label><input type="number" id="n" value="10" min="1"></div>
    <div><label for="retriever">Retriever</label><input type="text" id="retriever" placeholder="default"></div>
    <div><label for="deadline">Deadline (ms)</label><input type="number" id="deadline" placeholder="none" min="1"></div>
  </div>
  <div class="row">
    <div><label for="key">API key (if the server needs one)</label><input type="password" id="key"></div>
    <div style="flex:0"><button id="go">Rank</button></div>
  </div>
</fieldset>
<div class="err" id="error"></div>
<div class="cols">
  <div><h3 id="left-title">Input order</h3><div class="timing" id="left-timing"></div><div id="left"></div></div>
  <div><h3>Reranked</h3><div class="timing" id="right-timing"></div><div id="right"></div></div>
</div>
<script>
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var keyBox = $("key");
  try { keyBox.value = localStorage.getItem("crossrank-key") || ""; } catch (e) {}
  function headers() {
    var h = {"Content-Type": "application/json"};
    if (keyBox.value) { h["Authorization"] = "Bearer " + keyBox.value; }
    return h;
  }
  function mode() { return $("mode-search").checked ? "search" : "paste"; }
  function syncMode() {
    var s = mode() === "search";
    $("paste-box").style.display = s ? "none" : "";
    $("search-box").style.display = s ? "" : "none";
    $("left-title").textContent = s ? "First stage" : "Input order";
  }
  $("mode-search").onchange = syncMode; $("mode-paste").onchange = syncMode;
  var ready = fetch("info", {headers: headers()}).then(function (r) { return r.ok ? r.json() : null; }).then(function (info) {
    if (!info) { return; }
    $("model").textContent = "model " + info.model + " \\u00b7 " + (info.dtype || "") + " \\u00b7 max " +
      info.max_length + " tokens \\u00b7 batching " + info.batching + " \\u00b7 crossrank " + info.version;
    if (info.search) { $("mode-search").checked = true; } else { $("mode-search").disabled = true; }
    syncMode();
  }).catch(function () {});
  function fmt(x) { return (x === null || x === undefined) ? "\\u2014" : Number(x).toFixed(4); }
  function table(rows) {
    var t = document.createElement("table");
    var head = t.insertRow();
    ["#", "score", "move", "text"].forEach(function (h) {
      var th = document.createElement("th"); th.textContent = h; head.appendChild(th);
    });
    rows.forEach(function (r) {
      var tr = t.insertRow();
      var c0 = tr.insertCell(); c0.className = "num"; c0.textContent = r.rank;
      var c1 = tr.insertCell(); c1.className = "num"; c1.textContent = fmt(r.score);
      var c2 = tr.insertCell(); c2.className = "num";
      if (r.from !== undefined && r.from !== null) {
        var d = r.from - r.rank;
        c2.textContent = d > 0 ? "\\u2191" + d : d < 0 ? "\\u2193" + (-d) : "=";
        c2.className += d > 0 ? " up" : d < 0 ? " down" : " muted";
        c2.title = "was #" + r.from;
      }
      var c3 = tr.insertCell();
      if (r.title) { var b = document.createElement("div"); b.className = "title"; b.textContent = r.title;
                     c3.appendChild(b); }
      var s = document.createElement("div");
      s.textContent = r.text.length > 400 ? r.text.slice(0, 400) + "\\u2026" : r.text;
      c3.appendChild(s);
    });
    return t;
  }
  function show(where, rows) { var el = $(where); el.innerHTML = ""; el.appendChild(table(rows)); }
  function clear() { ["left", "right", "left-timing", "right-timing", "error"].forEach(function (id) {
    $(id).textContent = ""; }); }
  function fail(msg) { $("error").textContent = msg; }
  async function post(path, body) {
    var t0 = performance.now();
    var r = await fetch(path, {method: "POST", headers: headers(), body: JSON.stringify(body)});
    var ms = performance.now() - t0;
    var text = await r.text(), data = null;
    try { data = JSON.parse(text); } catch (e) {}
    if (!r.ok) {
      var m = data && (data.error || data.message || data.detail) || text;
      throw new Error(r.status + ": " + (typeof m === "string" ? m : JSON.stringify(m)));
    }
    return {data: data, ms: ms, headers: r.headers};
  }
  async function runPaste(query) {
    var texts = $("cands").value.split("\\n").map(function (s) { return s.trim(); })
      .filter(function (s) { return s.length; });
    if (!texts.length) { fail("paste at least one candidate"); return; }
    show("left", texts.map(function (t, i) { return {rank: i + 1, score: null, text: t}; }));
    $("left-timing").textContent = texts.length + " candidates";
    var res = await post("rerank", {query: query, texts: texts, return_text: true});
    show("right", res.data.map(function (r, i) {
      return {rank: i + 1, score: r.score, text: r.text, from: r.index + 1}; }));
    var h = res.headers;
    $("right-timing").textContent = "round trip " + res.ms.toFixed(0) + " ms \\u00b7 queue " +
      (h.get("x-queue-time") || "?") + " ms \\u00b7 inference " + (h.get("x-inference-time") || "?") +
      " ms \\u00b7 truncated " + (h.get("x-crossrank-truncated") || "0");
  }
  function hitRows(result) {
    return result.hits.map(function (h) {
      return {rank: h.rank, score: h.score, text: h.text, title: h.title, from: h.first_stage_rank}; });
  }
  async function runSearch(query) {
    var body = {query: query, k: parseInt($("k").value, 10) || undefined,
                n: parseInt($("n").value, 10) || undefined};
    if ($("retriever").value.trim()) { body.retriever = $("retriever").value.trim(); }
    if ($("deadline").value) { body.deadline_ms = parseFloat($("deadline").value); }
    var first = await post("search", Object.assign({}, body, {rerank: false}));
    show("left", first.data.hits.map(function (h) {
      return {rank: h.rank, score: h.first_stage_score, text: h.text, title: h.title}; }));
    var t = first.data.timings;
    $("left-timing").textContent = first.data.retriever + " \\u00b7 retrieve " + t.retrieve_ms.toFixed(1) +
      " ms \\u00b7 " + first.data.n_candidates + " candidates";
    var final = await post("search", body);
    show("right", hitRows(final.data));
    var f = final.data.timings;
    $("right-timing").textContent = (final.data.reranked ? "reranked " + final.data.n_reranked : "NOT reranked") +
      (final.data.reason ? " (" + final.data.reason + ")" : "") + " \\u00b7 retrieve " + f.retrieve_ms.toFixed(1) +
      " ms \\u00b7 rerank " + f.rerank_ms.toFixed(1) + " ms \\u00b7 total " + f.total_ms.toFixed(1) + " ms";
  }
  async function go() {
    clear();
    var query = $("query").value.trim();
    if (!query) { fail("type a query"); return; }
    try { localStorage.setItem("crossrank-key", keyBox.value); } catch (e) {}
    $("go").disabled = true;
    try { if (mode() === "search") { await runSearch(query); } else { await runPaste(query); } }
    catch (e) { fail(String(e.message || e)); }
    finally { $("go").disabled = false; }
  }
  $("go").onclick = go;
  $("query").addEventListener("keydown", function (e) { if (e.key === "Enter") { go(); } });
  syncMode();
  // Shareable links: /?q=QUERY runs a search (with --index); /?q=QUERY&cands=LINE%0ALINE reranks pasted lines.
  var params = new URLSearchParams(location.search);
  if (params.get("q")) {
    ready.then(function () {
      $("query").value = params.get("q");
      if (params.get("cands")) { $("mode-paste").checked = true; $("cands").value = params.get("cands"); }
      syncMode();
      go();
    });
  }
})();
</script>
</body>
</html>
"""

(function () {
  "use strict";
  window.addEventListener("error", function (event) { document.body.dataset.error = String(event.message); });
  var data = JSON.parse(document.getElementById("sample-data").textContent);
  var runs = data.runs;
  var $ = function (id) { return document.getElementById(id); };
  var KNOWN = ["reliability", "generality", "locality", "portability"];
  var started = false;
  var state = { run: 0, property: "", language: "", q: "", changed: false, page: 0, size: 25 };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function visible(text) {
    return String(text === undefined || text === null ? "" : text).replace(/\n/g, "\u21b5");
  }
  function same(a, b) { return String(a || "").trim() === String(b || "").trim(); }
  function pct(x) { return Math.round(100 * x); }
  function scoreText(scores) {
    if (!scores) { return ""; }
    return Object.keys(scores).map(function (k) { return k.toUpperCase() + " " + pct(scores[k]); })
      .join(" \u00b7 ");
  }

  function readHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    var run = parseInt(params.get("run") || "0", 10);
    state.run = run >= 0 && run < runs.length ? run : 0;
    state.property = params.get("property") || "";
    state.language = params.get("language") || "";
    state.q = params.get("q") || "";
    state.changed = params.get("changed") === "1";
    state.page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
  }
  function writeHash() {
    var params = new URLSearchParams();
    params.set("run", state.run);
    if (state.property) { params.set("property", state.property); }
    if (state.language) { params.set("language", state.language); }
    if (state.q) { params.set("q", state.q); }
    if (state.changed) { params.set("changed", "1"); }
    if (state.page) { params.set("page", state.page); }
    try { history.replaceState(null, "", "#" + params.toString()); } catch (e) { /* some file: viewers */ }
  }

  function options(select, values, all) {
    select.textContent = "";
    select.appendChild(el("option", "", all)).value = "";
    values.forEach(function (v) { select.appendChild(el("option", "", v)).value = v; });
  }
  function fillFilters() {
    var run = runs[state.run], props = [], langs = [];
    run.records.forEach(function (r) {
      r.probes.forEach(function (p) {
        if (props.indexOf(p.property) < 0) { props.push(p.property); }
        if (langs.indexOf(p.language) < 0) { langs.push(p.language); }
      });
    });
    options($("f-property"), props, "all properties");
    options($("f-language"), langs, "all languages");
    if (props.indexOf(state.property) < 0) { state.property = ""; }
    if (langs.indexOf(state.language) < 0) { state.language = ""; }
    $("f-property").value = state.property;
    $("f-language").value = state.language;
  }

  function matches(record, probe, needle) {
    if (state.property && probe.property !== state.property) { return false; }
    if (state.language && probe.language !== state.language) { return false; }
    if (state.changed && same(probe.pre, probe.post)) { return false; }
    if (!needle) { return true; }
    var hay = [probe.prompt, probe.expected, probe.reference, probe.pre, probe.post, record.record_id,
               record.request.prompt, record.request.target, record.request.subject].join("\n").toLowerCase();
    return hay.indexOf(needle) >= 0;
  }
  function filtered() {
    var needle = state.q.trim().toLowerCase(), out = [], probes = 0;
    runs[state.run].records.forEach(function (record) {
      var kept = record.probes.filter(function (p) { return matches(record, p, needle); });
      if (kept.length) { out.push({ record: record, probes: kept }); probes += kept.length; }
    });
    return { items: out, probes: probes };
  }

  function answerCell(text, scores, other, changed) {
    var td = el("td", changed ? "changed" : "");
    td.appendChild(el("span", "answer", visible(text)));
    if (changed) { td.appendChild(el("span", "tag", "changed")); }
    if (scores) {
      var line = el("div", "score", scoreText(scores));
      if (other && scores.f1 !== undefined && other.f1 !== undefined && scores.f1 !== other.f1) {
        line.classList.add(scores.f1 > other.f1 ? "up" : "down");
      }
      td.appendChild(line);
    }
    return td;
  }
  function probeRow(p) {
    var tr = el("tr", "probe"), changed = !same(p.pre, p.post);
    tr.dataset.property = p.property;
    tr.dataset.language = p.language;
    if (changed) { tr.classList.add("is-changed"); }
    var badge = KNOWN.indexOf(p.property) >= 0 ? p.property : "other";
    tr.appendChild(el("td")).appendChild(el("span", "badge b-" + badge, p.property));
    tr.appendChild(el("td", "", p.language));
    tr.appendChild(el("td", "prompt", p.prompt));
    var expected = el("td", "expected");
    expected.appendChild(el("span", "answer", visible(p.expected)));
    if (p.reference !== undefined && !same(p.reference, p.expected)) {
      expected.appendChild(el("span", "reference", "scored against: " + visible(p.reference)));
    }
    tr.appendChild(expected);
    tr.appendChild(answerCell(p.pre, p.pre_scores, null, false)).classList.add("pre");
    tr.appendChild(answerCell(p.post, p.post_scores, p.pre_scores, changed)).classList.add("post");
    return tr;
  }
  function recordCard(item) {
    var r = item.record, card = el("article", "record"), head = el("header");
    head.appendChild(el("span", "id", "#" + r.record_id));
    head.appendChild(el("span", "", "edit (" + r.request.language + "): " + r.request.prompt + " \u2192 "));
    head.appendChild(el("span", "target", r.request.target));
    if (r.request.subject) { head.appendChild(el("span", "id", "  subject: " + r.request.subject)); }
    card.appendChild(head);
    var table = el("table", "probes"), cols = el("colgroup");
    ["c-prop", "c-lang", "", "", "", ""].forEach(function (c) { cols.appendChild(el("col", c)); });
    table.appendChild(cols);
    var hr = table.appendChild(el("thead")).appendChild(el("tr"));
    ["property", "lang", "prompt", "expected", "unedited answer", "edited answer"].forEach(function (h) {
      hr.appendChild(el("th", "", h));
    });
    var body = table.appendChild(el("tbody"));
    item.probes.forEach(function (p) { body.appendChild(probeRow(p)); });
    card.appendChild(table);
    return card;
  }

  function render() {
    var result = filtered(), pages = Math.max(1, Math.ceil(result.items.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.size, shown = result.items.slice(start, start + state.size);
    var list = $("records");
    list.textContent = "";
    shown.forEach(function (item) { list.appendChild(recordCard(item)); });
    if (!shown.length) { list.appendChild(el("p", "empty", "No probe matches these filters.")); }
    $("status").textContent = result.items.length + " records, " + result.probes + " probes match";
    $("page").textContent = "page " + (state.page + 1) + " of " + pages +
      (shown.length ? " (records " + (start + 1) + "\u2013" + (start + shown.length) + ")" : "");
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    if (started) { writeHash(); }  /* a link to #charts etc. keeps its place until a filter changes */
    document.body.dataset.ready = "1";
  }

  function start() {
    if (!runs.length) { document.body.dataset.ready = "1"; return; }
    readHash();
    var select = $("f-run");
    runs.forEach(function (run, i) {
      var name = run.label + " \u2014 " + run.task + " (" + run.records.length + " records)";
      select.appendChild(el("option", "", name)).value = i;
    });
    select.value = String(state.run);
    fillFilters();
    $("f-q").value = state.q;
    $("f-changed").checked = state.changed;
    function on(id, set) {
      $(id).addEventListener("change", function (e) { set(e.target); state.page = 0; render(); });
    }
    on("f-run", function (t) { state.run = +t.value; fillFilters(); });
    on("f-property", function (t) { state.property = t.value; });
    on("f-language", function (t) { state.language = t.value; });
    on("f-changed", function (t) { state.changed = t.checked; });
    on("f-size", function (t) { state.size = +t.value; });
    var timer = null;
    $("f-q").addEventListener("input", function (e) {
      clearTimeout(timer);
      timer = setTimeout(function () { state.q = e.target.value; state.page = 0; render(); }, 150);
    });
    $("prev").addEventListener("click", function () { state.page -= 1; render(); });
    $("next").addEventListener("click", function () { state.page += 1; render(); });
    render();
    started = true;
  }
  start();
})();

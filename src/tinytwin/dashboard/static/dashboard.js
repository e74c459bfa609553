/* tinytwin dashboard page: the run list, one run followed live, the fleet, and run comparison.
 *
 * Data arrives once per selection from the JSON API, then as deltas over one EventSource
 * (server-sent events): "runs" when the list changes, "rounds" with the rounds committed
 * since the last one, "problem" when the database cannot be read. The page never reloads.
 * Text from the databases (run names, groups) goes through textContent, never innerHTML.
 */
(function () {
  "use strict";
  const $ = function (id) { return document.getElementById(id); };
  const state = { runs: [], key: null, info: null, R: null, source: null, checked: new Set(), device: null,
    fleetTimer: null, drawPending: false, userPicked: false };
  const FLEET_METRICS = { energy_j: "Energy, all rounds", bytes: "Bytes sent + received", busy_s: "Compute + airtime",
    rounds_trained: "Rounds trained", num_samples: "Training samples", accuracy: "Accuracy, latest round",
    status: "Status, latest round", group: "Group" };

  function fmtPct(a) { return a === null || a === undefined ? "—" : (100 * a).toFixed(2) + " %"; }
  function si(v, unit, digits) {
    if (v === null || v === undefined || isNaN(v)) return "—";
    const a = Math.abs(v), prefixes = [[1e9, "G"], [1e6, "M"], [1e3, "k"], [1, ""], [1e-3, "m"], [1e-6, "µ"]];
    for (const [f, p] of prefixes) { if (a >= f) return (v / f).toFixed(digits === undefined ? 1 : digits) + " " + p + unit; }
    return v === 0 ? "0 " + unit : (v / 1e-6).toFixed(1) + " µ" + unit;
  }
  function text(el, value) { el.textContent = value; return el; }
  function make(tag, cls, value) { const e = document.createElement(tag); if (cls) e.className = cls; if (value !== undefined) text(e, value); return e; }

  function showMessage(msg, info) {
    const m = $("message");
    if (!msg) { m.hidden = true; return; }
    m.hidden = false; m.className = "message" + (info ? " info" : ""); text(m, msg);
  }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    let body;
    try { body = await r.json(); } catch (e) { throw new Error("the server answered " + r.status + " without data"); }
    if (!r.ok || body.error) throw new Error(body.error || ("the server answered " + r.status));
    return body;
  }

  // ---- run list -------------------------------------------------------------------------
  function renderRuns(payload) {
    const same = JSON.stringify(payload.runs) === JSON.stringify(state.runs);
    state.runs = payload.runs;
    if (payload.root) text($("root"), payload.root);
    const note = $("runs-note");
    note.hidden = !payload.note; text(note, payload.note || "");
    if (payload.note && !state.key) showMessage(payload.note, true);
    else if (!payload.note && !state.key && $("message").classList.contains("info")) showMessage(null);
    const ul = $("run-list");
    if (same && ul.children.length) return;  // nothing changed: keep the elements (and any hover or focus)
    ul.replaceChildren();
    for (const run of payload.runs) {
      const li = make("li", run.error ? "bad" : "");
      li.dataset.key = run.key;
      if (run.key === state.key) li.classList.add("selected");
      const box = make("input"); box.type = "checkbox"; box.checked = state.checked.has(run.key); box.disabled = !!run.error;
      box.title = "compare"; box.addEventListener("click", function (ev) {
        ev.stopPropagation();
        if (box.checked) state.checked.add(run.key); else state.checked.delete(run.key);
        $("compare-btn").disabled = state.checked.size < 2;
      });
      const body = make("div");
      body.appendChild(make("div", "run-name", run.name || run.folder));
      const sub = run.error ? run.error : run.twin + " · " + run.status + " · round " + run.rounds_done + "/" + run.rounds_planned +
        " · " + run.num_devices + " devices · " + run.key;
      body.appendChild(make("div", "run-sub", sub));
      li.append(box, body);
      li.addEventListener("click", function () { state.userPicked = true; selectRun(run.key); });
      ul.appendChild(li);
    }
    $("compare-btn").disabled = state.checked.size < 2;
    if (!state.key && !state.userPicked) {  // follow mode: show the newest running run by itself
      const running = payload.runs.find(function (r) { return !r.error && r.status === "running"; });
      if (running) selectRun(running.key);
    }
  }

  // ---- one run ----------------------------------------------------------------------------
  function connect(key, after) {
    if (state.source) state.source.close();
    const url = "/api/stream?after=" + (after || 0) + (key ? "&run=" + encodeURIComponent(key) : "");
    const src = new EventSource(url);
    state.source = src;
    src.addEventListener("open", function () { text($("conn"), "live").className = "conn live"; });
    src.addEventListener("error", function () { text($("conn"), "reconnecting…").className = "conn"; });
    src.addEventListener("runs", function (ev) { renderRuns(JSON.parse(ev.data)); });
    src.addEventListener("rounds", function (ev) { if (state.key === key) applyDelta(JSON.parse(ev.data)); });
    src.addEventListener("problem", function (ev) { if (state.key === key) showMessage(JSON.parse(ev.data).error); });
  }

  async function selectRun(key) {
    state.key = key; state.device = null;
    location.hash = "run=" + encodeURIComponent(key);
    $("compare-view").hidden = true; $("device-panel").hidden = true;
    for (const li of $("run-list").children) li.classList.toggle("selected", li.dataset.key === key);
    let run;
    try { run = await getJSON("/api/run?run=" + encodeURIComponent(key)); }
    catch (e) { $("run-view").hidden = true; showMessage(e.message); connect(null, 0); return; }
    if (state.key !== key) return;
    showMessage(null);
    state.info = run; state.R = run.rounds; state.S = run.spread;
    text($("run-title"), run.name);
    text($("run-meta"), "twin " + run.twin + " · seed " + run.seed + " · " + run.num_devices + " devices in " +
      Object.keys(run.groups).length + " group(s) · run " + run.run_id + " · folder " + key);
    $("run-view").hidden = false;
    updateHeader(run.status, run.rounds_done, run.rounds_planned, run.counts);
    draw();
    refreshFleet();
    const last = state.R.round.length ? state.R.round[state.R.round.length - 1] : 0;
    connect(key, last);
  }

  function updateHeader(status, done, planned, counts) {
    text($("round-counter"), String(done)); text($("round-planned"), String(planned));
    $("round-progress").max = Math.max(planned, 1); $("round-progress").value = done;
    text($("run-status"), status).className = "badge " + status;
    if (counts) {
      text($("count-total"), String(counts.total)); text($("count-online"), String(counts.online));
      text($("count-training"), String(counts.training)); text($("count-failed"), String(counts.failed));
      text($("count-excluded"), String(counts.excluded));
    }
    const acc = state.R ? state.R.test_accuracy.filter(function (a) { return a !== null; }) : [];
    text($("latest-accuracy"), acc.length ? fmtPct(acc[acc.length - 1]) : "—");
  }

  function applyDelta(d) {
    const R = state.R, last = R.round.length ? R.round[R.round.length - 1] : 0;
    const rows = d.rounds.round.map(function (r, i) { return r > last ? i : -1; }).filter(function (i) { return i >= 0; });
    for (const col of Object.keys(R)) for (const i of rows) R[col].push(d.rounds[col][i]);
    const S = state.S, lastS = S && S.round.length ? S.round[S.round.length - 1] : 0;
    if (S && d.spread) d.spread.round.forEach(function (r, i) {
      if (r > lastS) for (const col of Object.keys(S)) S[col].push(d.spread[col][i]);
    });
    updateHeader(d.status, d.rounds_done, d.rounds_planned, d.counts);
    if (rows.length) {
      // Arrival log for benchmarks/bench_dashboard.py (update latency); the last 1000 only.
      window.ttArrivals = (window.ttArrivals || []).slice(-999);
      window.ttArrivals.push({ round: R.round[R.round.length - 1], received: Date.now() / 1000, drawn: null });
      scheduleDraw(); scheduleFleet(); if (state.device !== null) showDevice(state.device);
    }
  }

  function scheduleDraw() {
    if (state.drawPending) return;
    state.drawPending = true;
    requestAnimationFrame(function () { state.drawPending = false; draw(); });
  }
  function draw() {
    const log = window.ttArrivals || [], pending = log.filter(function (a) { return a.drawn === null; });
    return ttCharts.roundCharts({ acc_round: "chart-acc-round", acc_time: "chart-acc-time", bytes: "chart-bytes",
      energy: "chart-energy" }, state.R, state.S).then(function () {
      const now = Date.now() / 1000;
      pending.forEach(function (a) { a.drawn = now; });
    });
  }

  // ---- fleet and device ------------------------------------------------------------------
  function scheduleFleet() {
    if (state.fleetTimer) return;
    state.fleetTimer = setTimeout(function () { state.fleetTimer = null; refreshFleet(); }, 1500);
  }
  async function refreshFleet() {
    const key = state.key;
    let F;
    try { F = await getJSON("/api/fleet?run=" + encodeURIComponent(key) + "&metric=" + $("fleet-metric").value); }
    catch (e) { text($("fleet-note"), e.message); return; }
    if (state.key !== key) return;
    text($("fleet-note"), F.note || "");
    await ttCharts.fleet("chart-fleet", F, showDevice);
  }
  async function showDevice(device) {
    state.device = device;
    let D;
    try { D = await getJSON("/api/device?run=" + encodeURIComponent(state.key) + "&device=" + device); }
    catch (e) { showMessage(e.message); return; }
    $("device-panel").hidden = false;
    text($("device-title"), "Device " + D.device + " — " + D.group + " (" + D.profile + " on " + D.link + ")");
    const R = D.rounds, sum = function (k) { return R[k].reduce(function (s, v) { return s + (v || 0); }, 0); };
    text($("device-meta"), D.num_samples + " training samples · online in " + R.round.length + " rounds · energy " +
      si(sum("energy_j"), "J", 2) + " · bytes " + si(sum("bytes_up") + sum("bytes_down"), "B") + " · busy " +
      si(sum("compute_s") + sum("up_s") + sum("down_s"), "s", 2) + (R.status.length ? " · latest status " + R.status[R.status.length - 1] : ""));
    await ttCharts.device("chart-device-time", "chart-device-cost", D);
  }

  // ---- comparison -------------------------------------------------------------------------
  async function compare() {
    const keys = Array.from(state.checked);
    let C;
    try { C = await getJSON("/api/compare?runs=" + keys.map(encodeURIComponent).join(",")); }
    catch (e) { showMessage(e.message); return; }
    showMessage(null);
    state.key = null; state.userPicked = true;
    if (state.source) connect(null, 0);
    $("run-view").hidden = true; $("compare-view").hidden = false;
    text($("compare-meta"), C.runs.map(function (r) { return r.label; }).join("  vs  "));
    for (const kind of ["acc_round", "acc_time", "bytes", "energy"]) ttCharts.overlay("cmp-" + kind.replace("_", "-"), C.runs, kind);
    renderDiff(C.diff);
  }
  function renderDiff(diff) {
    const t = $("diff-table"); t.replaceChildren();
    const head = make("tr"); head.appendChild(make("th", "", "Round"));
    diff.labels.forEach(function (l) { head.appendChild(make("th", "", "Accuracy: " + l)); });
    diff.labels.slice(1).forEach(function (l) {
      for (const h of ["Δ accuracy (pp)", "Δ sim. time", "Δ bytes (cum.)", "Δ energy (cum.)"]) head.appendChild(make("th", "", h + ": " + l));
    });
    const thead = make("thead"); thead.appendChild(head); t.appendChild(thead);
    const body = make("tbody");
    for (const row of diff.rows) {
      const tr = make("tr"); tr.appendChild(make("td", "", String(row.round)));
      row.acc.forEach(function (a) { tr.appendChild(make("td", "", fmtPct(a))); });
      row.d_acc.forEach(function (_, j) {
        const da = row.d_acc[j];
        tr.appendChild(make("td", "", da === null ? "—" : (da >= 0 ? "+" : "") + (100 * da).toFixed(2)));
        tr.appendChild(make("td", "", si(row.d_sim_time_s[j], "s", 2)));
        tr.appendChild(make("td", "", si(row.d_bytes[j], "B")));
        tr.appendChild(make("td", "", si(row.d_energy_j[j], "J", 2)));
      });
      body.appendChild(tr);
    }
    t.appendChild(body);
  }

  // ---- start --------------------------------------------------------------------------------
  async function start() {
    const sel = $("fleet-metric");
    for (const [k, v] of Object.entries(FLEET_METRICS)) { const o = make("option", "", v); o.value = k; sel.appendChild(o); }
    sel.addEventListener("change", refreshFleet);
    $("compare-btn").addEventListener("click", compare);
    let payload;
    try { payload = await getJSON("/api/runs"); } catch (e) { showMessage(e.message); return; }
    const m = /run=([^&]+)/.exec(location.hash);
    if (m) { state.userPicked = true; state.key = decodeURIComponent(m[1]); }
    renderRuns(payload);
    if (state.key) selectRun(state.key); else connect(null, 0);
    window.addEventListener("hashchange", function () {  // links and the back button select runs too
      const h = /run=([^&]+)/.exec(location.hash);
      if (h && decodeURIComponent(h[1]) !== state.key) { state.userPicked = true; selectRun(decodeURIComponent(h[1])); }
    });
  }
  start();
})();

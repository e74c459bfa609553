/* tinytwin charts: the Plotly figures shared by the live dashboard and the HTML report.
 *
 * One definition of each chart, so the page that follows a run and the report it leaves
 * behind show the same thing. Inputs are column-wise round tables as stored in results.db
 * (round, sim_time_s, test_accuracy, bytes_up, bytes_down, energy_j, ...). Every axis
 * names its unit; SI prefixes come from Plotly's "~s" tick format (kB, MB, mJ, kJ).
 * Plotly.react with a fixed uirevision keeps the user's zoom while new rounds arrive.
 */
(function (root) {
  "use strict";
  const CONFIG = { responsive: true, displaylogo: false };
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

  function cumulative(values) {
    let s = 0;
    return values.map(function (v) { s += v || 0; return s; });
  }

  function layout(title, xTitle, yTitle, extra) {
    return Object.assign({
      title: { text: title, font: { size: 15 }, x: 0.01, xanchor: "left" },
      xaxis: { title: { text: xTitle }, zeroline: false },
      yaxis: { title: { text: yTitle }, zeroline: false },
      margin: { l: 65, r: 20, t: 40, b: 60 },
      hovermode: "closest",
      uirevision: "keep",
      legend: { orientation: "h", y: -0.3 },
    }, extra || {});
  }

  function evaluated(R, x) {
    const xs = [], ys = [], rs = [];
    for (let i = 0; i < R.round.length; i++) {
      if (R.test_accuracy[i] === null || R.test_accuracy[i] === undefined) continue;
      xs.push(R[x][i]); ys.push(100 * R.test_accuracy[i]); rs.push(R.round[i]);
    }
    return { x: xs, y: ys, round: rs };
  }

  /* Decentralized runs: min–max band of the devices' own accuracies (S from round_metrics), on R's x axis. */
  function spreadTraces(R, S, x) {
    if (!S || !S.round.length) return [];
    const xOf = {};
    R.round.forEach(function (r, i) { xOf[r] = R[x][i]; });
    const idx = S.round.map(function (r, i) { return S.acc_min[i] !== null && xOf[r] !== undefined ? i : -1; })
      .filter(function (i) { return i >= 0; });
    const xs = idx.map(function (i) { return xOf[S.round[i]]; });
    const band = function (key, name, fill) {
      return { x: xs, y: idx.map(function (i) { return 100 * S[key][i]; }), type: "scatter", mode: "lines", name: name,
        line: { width: 0, color: COLORS[0] }, fill: fill, fillcolor: "rgba(31,119,180,0.15)",
        hovertemplate: "%{y:.2f} %<extra>" + name + "</extra>" };
    };
    const lo = band("acc_min", "device min", "none");
    lo.showlegend = false;
    return [lo, band("acc_max", "devices' min–max", "tonexty")];
  }

  function accuracy(div, R, x, S) {
    const p = evaluated(R, x);
    const byTime = x === "sim_time_s";
    const trace = {
      x: p.x, y: p.y, customdata: p.round, type: "scatter", mode: "lines+markers", name: "test accuracy",
      line: { color: COLORS[0] }, marker: { size: 5 },
      hovertemplate: (byTime ? "round %{customdata}<br>t = %{x:.3~s}s" : "round %{x}") + "<br>%{y:.2f} %<extra></extra>",
    };
    const title = byTime ? "Test accuracy against simulated time" : "Test accuracy against round";
    if (S) trace.name = "mean of the devices' models";
    return Plotly.react(div, spreadTraces(R, S, x).concat([trace]),
      layout(title, byTime ? "Simulated time (s)" : "Round", "Test accuracy (%)",
        { xaxis: { title: { text: byTime ? "Simulated time (s)" : "Round" }, ticksuffix: byTime ? " s" : "" } }),
      CONFIG);
  }

  /* Cumulative lines (left axis) and per-round bars (right axis) of one quantity. */
  function cumulativeAndPerRound(div, R, series, title, unit) {
    const traces = [];
    series.forEach(function (s, i) {
      const per = R[s.key];
      traces.push({ x: R.round, y: cumulative(per), type: "scatter", mode: "lines", name: s.name + ", cumulative",
        line: { color: COLORS[s.color || i] }, hovertemplate: "round %{x}<br>%{y:.4~s}" + unit + "<extra>" + s.name + " cumulative</extra>" });
      traces.push({ x: R.round, y: per, type: "bar", name: s.name + ", per round", yaxis: "y2", opacity: 0.35,
        marker: { color: COLORS[s.color || i] }, hovertemplate: "round %{x}<br>%{y:.4~s}" + unit + "<extra>" + s.name + " per round</extra>" });
    });
    return Plotly.react(div, traces, layout(title, "Round", "Cumulative (" + unit + ")", {
      yaxis: { title: { text: "Cumulative (" + unit + ")" }, tickformat: ".3~s", ticksuffix: unit, rangemode: "tozero" },
      yaxis2: { title: { text: "Per round (" + unit + ")" }, tickformat: ".3~s", ticksuffix: unit, overlaying: "y",
        side: "right", showgrid: false, rangemode: "tozero" },
      margin: { l: 70, r: 70, t: 40, b: 60 }, barmode: "group",
    }), CONFIG);
  }

  function bytes(div, R) {
    return cumulativeAndPerRound(div, R, [
      { key: "bytes_up", name: "uplink", color: 0 },
      { key: "bytes_down", name: "downlink", color: 1 },
    ], "Bytes on the links, all devices", "B");
  }

  function energy(div, R) {
    return cumulativeAndPerRound(div, R, [{ key: "energy_j", name: "energy", color: 2 }],
      "Energy of all devices", "J");
  }

  /* The four round charts; `ids` maps acc_round / acc_time / bytes / energy to element ids. */
  function roundCharts(ids, R, S) {
    return Promise.all([
      accuracy(ids.acc_round, R, "round", S), accuracy(ids.acc_time, R, "sim_time_s", S),
      bytes(ids.bytes, R), energy(ids.energy, R),
    ]);
  }

  /* Several runs overlaid: kind is acc_round, acc_time, bytes or energy (cumulative). */
  function overlay(div, runs, kind) {
    const traces = runs.map(function (run, i) {
      const R = run.rounds;
      let x, y;
      if (kind === "acc_round" || kind === "acc_time") {
        const p = evaluated(R, kind === "acc_time" ? "sim_time_s" : "round"); x = p.x; y = p.y;
      } else if (kind === "bytes") {
        x = R.round; y = cumulative(R.bytes_up.map(function (u, j) { return (u || 0) + (R.bytes_down[j] || 0); }));
      } else { x = R.round; y = cumulative(R.energy_j); }
      return { x: x, y: y, type: "scatter", mode: "lines", name: run.label, line: { color: COLORS[i % COLORS.length] } };
    });
    const spec = {
      acc_round: ["Test accuracy against round", "Round", "Test accuracy (%)", {}],
      acc_time: ["Test accuracy against simulated time", "Simulated time (s)", "Test accuracy (%)", {}],
      bytes: ["Cumulative bytes, up + down", "Round", "Bytes (B)", { yaxis: { title: { text: "Bytes (B)" }, tickformat: ".3~s", ticksuffix: "B" } }],
      energy: ["Cumulative energy, all devices", "Round", "Energy (J)", { yaxis: { title: { text: "Energy (J)" }, tickformat: ".3~s", ticksuffix: "J" } }],
    }[kind];
    return Plotly.react(div, traces, layout(spec[0], spec[1], spec[2], spec[3]), CONFIG);
  }

  /* Devices as a graph coloured by a metric (F from /api/fleet or the report's data). */
  function fleet(div, F, onClick) {
    const big = F.device.length > 2000;
    const traces = [];
    if (F.edge_x && F.edge_x.length) {
      traces.push({ x: F.edge_x, y: F.edge_y, type: big ? "scattergl" : "scatter", mode: "lines", hoverinfo: "skip",
        line: { color: "rgba(120,120,120,0.35)", width: 1 }, name: "links", showlegend: false });
    }
    const text = F.device.map(function (d, i) {
      const v = F.value[i];
      const shown = v === null || v === undefined ? "no data" : (typeof v === "number" ? (+v.toPrecision(4)) + (F.unit ? " " + F.unit : "") : v);
      return "device " + d + " (" + F.group[i] + ")<br>" + F.label + ": " + shown;
    });
    const marker = { size: F.device.length > 300 ? 7 : 11, line: { width: 0.5, color: "#fff" } };
    if (F.categorical) {
      const cats = Array.from(new Set(F.value.map(String)));
      cats.forEach(function (c, k) {
        const idx = F.value.map(function (v, i) { return String(v) === c ? i : -1; }).filter(function (i) { return i >= 0; });
        traces.push({ x: idx.map(function (i) { return F.x[i]; }), y: idx.map(function (i) { return F.y[i]; }),
          customdata: idx.map(function (i) { return F.device[i]; }), text: idx.map(function (i) { return text[i]; }),
          type: big ? "scattergl" : "scatter", mode: "markers", name: c, hovertemplate: "%{text}<extra></extra>",
          marker: Object.assign({ color: COLORS[k % COLORS.length] }, marker) });
      });
    } else {
      traces.push({ x: F.x, y: F.y, customdata: F.device, text: text, type: big ? "scattergl" : "scatter", mode: "markers",
        name: F.label, hovertemplate: "%{text}<extra></extra>", showlegend: false,
        marker: Object.assign({ color: F.value.map(function (v) { return v === null ? NaN : v; }), colorscale: "Viridis",
          showscale: true, colorbar: { title: { text: F.unit ? F.label + " (" + F.unit + ")" : F.label, side: "right" } } }, marker) });
    }
    const lay = layout("Fleet: " + F.label, "", "", {
      xaxis: { visible: false }, yaxis: { visible: false, scaleanchor: "x" }, margin: { l: 10, r: 10, t: 40, b: 10 },
      legend: { orientation: "v" }, uirevision: F.metric,
    });
    return Plotly.react(div, traces, lay, CONFIG).then(function (gd) {
      if (onClick && !gd._ttClick) {
        gd._ttClick = true;
        gd.on("plotly_click", function (ev) {
          const pt = ev.points.find(function (p) { return p.customdata !== undefined; });
          if (pt) onClick(pt.customdata);
        });
      }
      return gd;
    });
  }

  /* One device's rounds: stacked time bars, energy and bytes per round. */
  function device(divTime, divCost, D) {
    const R = D.rounds;
    const t = [["compute_s", "compute"], ["up_s", "uplink airtime"], ["down_s", "downlink airtime"]].map(function (c, i) {
      return { x: R.round, y: R[c[0]], type: "bar", name: c[1], marker: { color: COLORS[i] },
        hovertemplate: "round %{x}<br>%{y:.3~s}s<extra>" + c[1] + "</extra>" };
    });
    const bytesPer = R.bytes_up.map(function (u, j) { return (u || 0) + (R.bytes_down[j] || 0); });
    const c = [
      { x: R.round, y: R.energy_j, type: "scatter", mode: "lines+markers", name: "energy", marker: { color: COLORS[2] },
        hovertemplate: "round %{x}<br>%{y:.3~s}J<extra>energy</extra>" },
      { x: R.round, y: bytesPer, type: "scatter", mode: "lines+markers", name: "bytes up + down", yaxis: "y2",
        marker: { color: COLORS[4] }, hovertemplate: "round %{x}<br>%{y:.3~s}B<extra>bytes</extra>" },
    ];
    return Promise.all([
      Plotly.react(divTime, t, layout("Device " + D.device + ": time per round", "Round", "Time (s)",
        { barmode: "stack", yaxis: { title: { text: "Time (s)" }, tickformat: ".3~s", ticksuffix: "s" } }), CONFIG),
      Plotly.react(divCost, c, layout("Device " + D.device + ": energy and bytes per round", "Round", "Energy (J)", {
        yaxis: { title: { text: "Energy (J)" }, tickformat: ".3~s", ticksuffix: "J", rangemode: "tozero" },
        yaxis2: { title: { text: "Bytes (B)" }, tickformat: ".3~s", ticksuffix: "B", overlaying: "y", side: "right", showgrid: false, rangemode: "tozero" },
        margin: { l: 70, r: 70, t: 40, b: 60 } }), CONFIG),
    ]);
  }

  root.ttCharts = { roundCharts: roundCharts, accuracy: accuracy, bytes: bytes, energy: energy, overlay: overlay,
    fleet: fleet, device: device, cumulative: cumulative, COLORS: COLORS };
})(window);

"""The interactive charts of report.html: the dashboard's Plotly charts, frozen into the file.

The report must open offline, years later, from an e-mail attachment, so plotly.js (from
the installed ``plotly`` package) and tinytwin's chart code (``charts.js``, the same file
the live dashboard serves) are inlined, and the data travels as one JSON block. The data
comes from the run database through the dashboard's read-only reader, so both pages show
the same numbers computed the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinytwin.dashboard import fleet
from tinytwin.dashboard.data import RunDB, json_safe

CHARTS_JS = Path(__file__).with_name("charts.js")
REPORT_METRICS = ("energy_j", "bytes", "busy_s", "rounds_trained", "num_samples", "status", "group")
MAX_DEVICE_ROWS = 20_000  # per-device rounds for click-through; above this they stay in csv/device_rounds.csv


def chart_data(db_path: Path) -> dict[str, Any]:
    """Everything the report's charts draw, read once from the database."""
    db = RunDB(db_path)
    try:
        info = db.info()
        devices = db.devices()
        totals = db.device_totals()
        base = fleet.layout(devices, db.spec_yaml(), db_path.parent, info["seed"])
        metrics = {
            m: {
                "metric": m,
                "label": fleet.METRICS[m][0],
                "unit": fleet.METRICS[m][1],
                "categorical": m in fleet.CATEGORICAL,
                "value": fleet.metric_values(m, devices, totals),
            }
            for m in REPORT_METRICS
        }
        rows = db.device_row_count()
        per_device = (
            {str(d["device"]): {**d, "rounds": db.device_rounds(d["device"])} for d in devices}
            if rows <= MAX_DEVICE_ROWS
            else None
        )
        return json_safe(
            {
                "rounds": db.rounds(0),
                "spread": db.spread(0),
                "fleet": {
                    **base,
                    "device": [d["device"] for d in devices],
                    "group": [d["group"] for d in devices],
                    "metrics": metrics,
                },
                "devices": per_device,
                "device_rows": rows,
                "class_hist": db.class_histograms(),
            }
        )
    finally:
        db.close()


def _inline_json(data: Any) -> str:
    """JSON that cannot close its <script> element early."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _plotly_js() -> str:
    import plotly

    return (Path(plotly.__file__).with_name("package_data") / "plotly.min.js").read_text(encoding="utf-8")


INIT_JS = """
(function () {
  const D = JSON.parse(document.getElementById("tt-data").textContent);
  ttCharts.roundCharts({acc_round: "chart-acc-round", acc_time: "chart-acc-time", bytes: "chart-bytes",
    energy: "chart-energy"}, D.rounds, D.spread);
  const sel = document.getElementById("fleet-metric");
  for (const [k, m] of Object.entries(D.fleet.metrics)) {
    const o = document.createElement("option"); o.value = k; o.textContent = m.label; sel.appendChild(o);
  }
  function showDevice(dev) {
    const panel = document.getElementById("device-panel");
    panel.hidden = false;
    const note = document.getElementById("device-note");
    if (!D.devices) {
      note.textContent = "Device " + dev + ": per-device rounds (" + D.device_rows +
        " rows) are not embedded in this report; see csv/device_rounds.csv or `tinytwin dashboard`.";
      return;
    }
    const d = D.devices[String(dev)];
    note.textContent = "Device " + dev + " — " + d.group + " (" + d.profile + " on " + d.link + "), " +
      d.num_samples + " training samples, online in " + d.rounds.round.length + " rounds.";
    ttCharts.device("chart-device-time", "chart-device-cost", d);
  }
  function drawFleet() {
    const F = Object.assign({}, D.fleet, D.fleet.metrics[sel.value]);
    document.getElementById("fleet-note").textContent = F.note || "";
    ttCharts.fleet("chart-fleet", F, showDevice);
  }
  sel.addEventListener("change", drawFleet);
  drawFleet();
  const H = D.class_hist;
  Plotly.newPlot("chart-class-hist", [{type: "heatmap", z: H.z, y: H.device, colorscale: "Blues", reversescale: true,
    colorbar: {title: {text: "Samples"}}, hovertemplate: "device %{y}, class %{x}: %{z} samples<extra></extra>"}],
    {title: {text: "Training samples per class on each device", font: {size: 15}}, xaxis: {title: {text: "Class"}, dtick: 1},
     yaxis: {title: {text: "Device"}, autorange: "reversed"}, margin: {l: 65, r: 20, t: 40, b: 50}},
    {responsive: true, displaylogo: false});
})();
"""

SECTION = """
<div class="grid">
<div id="chart-acc-round" class="chart"></div>
<div id="chart-acc-time" class="chart"></div>
<div id="chart-bytes" class="chart"></div>
<div id="chart-energy" class="chart"></div>
</div>
<h3>Fleet</h3>
<p><label>Colour devices by <select id="fleet-metric"></select></label>
<span id="fleet-note" class="note"></span> <span class="note">Click a device for its rounds.</span></p>
<div id="chart-fleet" class="chart tall"></div>
<div id="device-panel" hidden><p id="device-note"></p>
<div class="grid"><div id="chart-device-time" class="chart"></div><div id="chart-device-cost" class="chart"></div></div></div>
<div id="chart-class-hist" class="chart tall"></div>
"""

CSS = """
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:.8rem}
.chart{min-height:360px;border:1px solid #eee;border-radius:6px}.chart.tall{min-height:520px}
"""


def charts_section(db_path: Path) -> str:
    """The charts' markup, the data block and the inlined scripts (plotly.js, charts.js, the start-up code)."""
    data = chart_data(db_path)
    return (
        SECTION
        + f'<script type="application/json" id="tt-data">{_inline_json(data)}</script>\n'
        + f"<script>{_plotly_js()}</script>\n"
        + f"<script>{CHARTS_JS.read_text(encoding='utf-8')}</script>\n"
        + f"<script>{INIT_JS}</script>\n"
    )

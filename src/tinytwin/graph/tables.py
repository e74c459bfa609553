"""Markdown tables of a forecasting result in the shape of seed 004's Tables 5 and 6."""

from __future__ import annotations

from typing import Any

LABELS = {
    "centralized": "Centralized",
    "traditional": "Traditional FL",
    "serverfree": "Server-free FL",
    "gossip": "Gossip learning",
    "gossip-merge": "Gossip (merge own)",
}


def table5(result: dict[str, Any]) -> str:
    """MAE [mph] / RMSE [mph] / WMAPE [%] per horizon, one row per setup, persistence last."""
    horizons = list(result["persistence"])
    head = "| setup | " + " | ".join(f"{h} MAE | {h} RMSE | {h} WMAPE" for h in horizons) + " |"
    rule = "|---|" + "---:|" * (3 * len(horizons))
    rows = [(LABELS.get(s, s), r["test"]) for s, r in result["setups"].items()] + [
        ("Persistence (last value)", result["persistence"])
    ]
    body = [
        "| "
        + name
        + " | "
        + " | ".join(f"{m[h]['mae']:.2f} | {m[h]['rmse']:.2f} | {m[h]['wmape']:.2f}" for h in horizons)
        + " |"
        for name, m in rows
    ]
    return "\n".join([head, rule, *body])


def table6(result: dict[str, Any]) -> str:
    """Per epoch: model MB sent per cloudlet, node-feature MB per trainer, training and aggregation FLOPs."""
    head = "| setup | model [MB]/epoch | node features [MB]/epoch per trainer | all trainers | training FLOPs/epoch | aggregation FLOPs/epoch |"
    rule = "|---|---:|---:|---:|---:|---:|"
    body = []
    for s, r in result["setups"].items():
        c = r["costs"]
        model = "-" if s == "centralized" else f"{c['model_bytes_per_epoch_per_cloudlet'] / 1e6:.2f}"
        agg = "-" if s == "centralized" else f"{c['aggregation_flops_per_epoch'] / 1e6:.2f}M"
        body.append(
            f"| {LABELS.get(s, s)} | {model} | {c['feature_bytes_per_epoch_per_site'] / 1e6:.2f} | {c['feature_bytes_per_epoch_total'] / 1e6:.2f} | {c['train_flops_per_epoch'] / 1e12:.3f}T | {agg} |"
        )
    return "\n".join([head, rule, *body])


def partition_table(summary: dict[str, Any]) -> str:
    """Cloudlets of one graph: owned sensors, halo, halo nodes from other cloudlets, feature MB per epoch."""
    head = "| cloudlet | sensors owned | halo (2-hop) | from other cloudlets | neighbours | node features [MB]/epoch |"
    rule = "|---:|---:|---:|---:|---|---:|"
    body = [
        f"| {r['cloudlet']} | {r['owned']} | {r['halo']} | {r['remote']} | {', '.join(map(str, r['neighbours'])) or '-'} | {r['feature_bytes_per_epoch'] / 1e6:.3f} |"
        for r in summary["cloudlets"]
    ]
    return "\n".join([head, rule, *body])


def per_cloudlet_wmape(result: dict[str, Any], horizon: str) -> str:
    """WMAPE [%] of each cloudlet's own sensors, one row per setup (the seed's Figure 24 as a table)."""
    first = next(iter(result["setups"].values()))
    ids = [c["cloudlet"] for c in first["per_cloudlet"]]
    head = "| setup | " + " | ".join(f"cloudlet {i}" for i in ids) + " |"
    rule = "|---|" + "---:|" * len(ids)
    body = [
        f"| {LABELS.get(s, s)} | " + " | ".join(f"{c[horizon]['wmape']:.2f}" for c in r["per_cloudlet"]) + " |"
        for s, r in result["setups"].items()
    ]
    return "\n".join([head, rule, *body])


def fleet_table(result: dict[str, Any]) -> str:
    """The cost model on the cloudlets' hardware and links: modelled time, energy, link bytes per setup."""
    first = next(iter(result["setups"].values()))["fleet"]
    head = (
        f"| setup ({first['profile']} cloudlets on {first['link']}, server {first['server_profile']}) "
        "| modelled time [s] | energy [kJ] | link bytes [MB] |"
    )
    rule = "|---|---:|---:|---:|"
    body = [
        f"| {LABELS.get(s, s)} | {r['fleet']['time_s']:.1f} | {r['fleet']['energy_j'] / 1e3:.2f} | {r['fleet']['bytes'] / 1e6:.2f} |"
        for s, r in result["setups"].items()
    ]
    return "\n".join([head, rule, *body])

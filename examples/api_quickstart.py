"""The Python API, notebook style: run the quickstart, look at its tables, compare two learning rates.

    PYTHONPATH=src .venv/bin/python examples/api_quickstart.py

Each ``# %%`` block is a notebook cell (VS Code and Jupytext run them one by one).
"""

# %% Load the experiment with overrides (the same dotted keys as `tinytwin run --set`)
from pathlib import Path

import tinytwin

HERE = Path(__file__).resolve().parent
exp = tinytwin.Experiment.from_yaml(HERE / "quickstart.yaml", overrides={"rounds": 10, "algorithm.lr": 0.05})
print(exp.spec.name, exp.spec.rounds, "rounds,", exp.spec.fleet.num_devices, "devices")

# %% Run it on the simulator, following each round
result = exp.run(
    twin="simulate",
    out="runs",
    on_round=lambda r, info: print(f"round {r:2d}  accuracy {info['accuracy']:.3f}"),
)
print("run folder:", result.run_dir)
print("final accuracy:", result.summary["final_accuracy"])

# %% The per-round and per-device tables are pandas DataFrames (read from results.db)
print(result.rounds[["round", "sim_time_s", "test_accuracy", "bytes_up", "energy_j"]].tail())
print(result.devices[["device", "group", "profile", "num_samples"]].head())

# %% Two learning rates, three seeds each: a tiny sweep by hand (`tinytwin sweep` does this at scale)
finals = {}
for lr in (0.05, 0.1):
    finals[lr] = [
        tinytwin.Experiment.from_yaml(HERE / "quickstart.yaml", overrides={"rounds": 10, "algorithm.lr": lr, "seed": s})
        .run(out="runs")
        .final_accuracy
        for s in (42, 43, 44)
    ]

# %% Paired statistics: the same seeds in both arms
from tinytwin.sweep.stats import cell_stats, paired_test  # noqa: E402

for lr, accs in finals.items():
    s = cell_stats(accs)
    print(f"lr {lr}: mean {s.mean:.3f}, 95 % CI (t) [{s.t_low:.3f}, {s.t_high:.3f}]")
t = paired_test(finals[0.05], finals[0.1])
print(f"lr 0.1 - lr 0.05: {t.mean_diff:+.3f}, paired t p = {t.t_p:.3f}, Cohen's d_z = {t.cohens_dz:.2f}")

"""A small Flower app (ClientApp + ServerApp) running the workloads of benchmarks/bench_vs_flower.py.

Run by benchmarks/bench_vs_flower.py through ``python -m flower_digits.run`` in the Flower
virtualenv (benchmarks/flower_setup.sh); see run.py.
"""

"""Datasets (an embedded default plus standard files read from a local folder) and partitioners."""

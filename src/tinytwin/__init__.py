"""tinytwin: digital twins for federated and decentralized learning on tiny devices.

One experiment file runs on three twins of the same fleet: a vectorised simulator
(``tinytwin run``), an emulator with one OS process per device, and C firmware on
emulated Cortex-M chips. This package holds the parts they share: the experiment
spec, data and partitioners, the model zoo with its memory and FLOP accounting,
the device catalog and cost model, the algorithms, the wire encodings, the results
store and the reports.
"""

from tinytwin.version import __version__

__all__ = ["Experiment", "RunResult", "__version__"]


def __getattr__(name: str):  # lazy: `import tinytwin` stays free of torch and pandas
    if name in ("Experiment", "RunResult"):
        from tinytwin import api

        return getattr(api, name)
    raise AttributeError(f"module 'tinytwin' has no attribute {name!r}")

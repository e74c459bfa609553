"""The emulation twin: one OS process per device, real TCP, authenticated frames.

This package's ``__init__`` imports nothing on purpose: device processes run
``python -m tinytwin.emulate.device`` and must stay small (numpy only, no torch).
See ``docs/emulation.md``.
"""

"""The firmware twin: the project's C firmware (``firmware/``) built for the host or a Cortex-M.

:mod:`tinytwin.firmware.hostlib` compiles the C training library for the host and binds it
with ctypes, so tests can check it number for number against the PyTorch models.
"""

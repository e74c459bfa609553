"""The twin-neutral core: what every twin needs before and around its rounds, owned by none of
them (the simulator, the emulation and the firmware twin import it; it imports no twin's
private names)."""

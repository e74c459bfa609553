"""``emulate --tls``: every connection of a run (devices, local aggregators, peers) over TLS against
a CA made for the run; each run equals the plaintext one, and a client that does not trust the
run's CA is refused."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path

from emulate_util import LOSSLESS, QUICK, ROOT, stored_rows
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.emulate.tls import CA_CERT, TLS_DIR, client_context
from tinytwin.spec.load import load_spec


def test_a_tls_run_equals_the_plaintext_run_and_trusts_only_its_ca(tmp_path: Path) -> None:
    sets = [*LOSSLESS[1:], "fleet.groups.0.count=4", "rounds=3"]  # 3 rounds, paced (time_scale 0.05)
    spec, spec_yaml = load_spec(QUICK, sets)
    run_dir = tmp_path / "tls"
    seen: dict[str, object] = {}

    def probe() -> None:  # a client of our own, beside the devices, while the run goes on
        edir = run_dir / "emulate"
        deadline = time.monotonic() + 60
        while not (edir / "coordinator.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.01)
        port = int(json.loads((edir / "coordinator.json").read_text())["port"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_context(edir / TLS_DIR / CA_CERT).wrap_socket(raw, server_hostname="127.0.0.1") as s:
                seen["cipher"] = s.cipher()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            try:  # the system's CAs do not vouch for it
                ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
            except ssl.SSLCertVerificationError:
                seen["untrusted_refused"] = True

    prober = threading.Thread(target=probe)
    prober.start()
    opts = EmulateOptions(time_scale=0.05, tls=True)
    _, secure = start_emulation(spec, spec_yaml, tmp_path, ROOT / "examples", opts, None, run_dir, report=False)
    prober.join(timeout=60)
    _, plain = start_emulation(spec, spec_yaml, tmp_path / "plain", ROOT / "examples", EmulateOptions(time_scale=0.0))
    assert seen.get("cipher"), "the coordinator did not speak TLS with the run's certificate"
    assert seen.get("untrusted_refused")
    assert secure["final_accuracy"] == plain["final_accuracy"]
    assert (secure["bytes_up"], secure["bytes_down"]) == (plain["bytes_up"], plain["bytes_down"])
    rounds, _, _ = stored_rows(run_dir)
    assert [r["completed"] for r in rounds] == [4, 4, 4]
    keys = [p for p in (run_dir / "emulate" / TLS_DIR).iterdir() if p.suffix == ".key"]
    assert keys and all(p.stat().st_mode & 0o077 == 0 for p in keys)


def test_a_hierarchical_run_over_tls_equals_the_plaintext_run(tmp_path: Path) -> None:
    """Devices to their local aggregators and the aggregators to the global coordinator, all over
    TLS with the run's CA; the models are the plaintext run's."""
    from tinytwin.emulate.hier_state import HierOptions

    sets = [*LOSSLESS[1:], "fleet.groups.0.count=6", "rounds=2", "algorithm.name=hierarchical"]
    spec, spec_yaml = load_spec(QUICK, [*sets, 'algorithm.hierarchical={"num_clusters": 2}'])
    run_dir = tmp_path / "tls"
    _, secure = start_emulation(
        spec, spec_yaml, tmp_path, ROOT / "examples", HierOptions(time_scale=0.0, tls=True), None, run_dir, report=False
    )
    _, plain = start_emulation(spec, spec_yaml, tmp_path / "plain", ROOT / "examples", HierOptions(time_scale=0.0))
    assert secure["final_accuracy"] == plain["final_accuracy"]
    assert (run_dir / "emulate" / TLS_DIR / CA_CERT).is_file()
    cfg = json.loads((run_dir / "emulate" / "devices" / "d0.json").read_text())
    assert cfg["tls_ca"].endswith(CA_CERT)


def test_a_decentralized_run_over_tls_equals_the_plaintext_run(tmp_path: Path) -> None:
    """Peers to the coordinator and peer to peer over TLS with the run's CA: the same models."""
    import numpy as np
    import yaml

    from dfl_util import spec_dict
    from tinytwin.emulate.dfl_state import DflOptions
    from tinytwin.spec.load import validate_spec

    raw = spec_dict(rounds=3, algorithm__name="decfedavg")
    spec = validate_spec(raw)
    runs = {}
    for tls in (True, False):
        run_dir, summary = start_emulation(
            spec, yaml.safe_dump(raw), tmp_path / str(tls), None, DflOptions(time_scale=0.0, tls=tls), report=False
        )
        runs[tls] = (np.load(run_dir / "emulate" / "final_models.npz"), summary)
        cfg = json.loads((run_dir / "emulate" / "devices" / "d0.json").read_text())
        assert bool(cfg["tls_ca"]) == tls  # the peers serve and dial TLS with the run's CA
    (secure, s_summary), (plain, p_summary) = runs[True], runs[False]
    assert all(np.array_equal(secure[k], plain[k]) for k in plain.files)
    assert s_summary["emulate"]["frames_rejected"] == {} and s_summary["messages"] == p_summary["messages"]

"""TLS for the coordinator's connections (``tinytwin emulate --tls``): a CA made for the run.

Why: frames carry an HMAC, so nobody can forge or replay them, but they are plaintext; when
devices reach the coordinator over a real network (another machine, a namespace bridge),
anyone on the path reads the models. With ``--tls`` the run makes its own certificate
authority (Debian's ``openssl``), signs one certificate for the coordinator's address, and
every device verifies the coordinator against that CA before it says HELLO. The files live
in ``emulate/tls/`` (keys 0600 in a 0700 folder); a resumed coordinator reuses them, since
the devices that outlived it trust only that CA.

What the cost model does not count: TLS's handshake and its per-record overhead (5-byte
header and 16-byte tag per record of up to 16 KB) are not in the simulated bytes; the frames
inside are byte for byte the ones it counts.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
from pathlib import Path

from tinytwin.errors import TinyTwinError
from tinytwin.store.files import private_dirs, private_umask, write_private

TLS_DIR = "tls"
CA_CERT = "ca.pem"
SERVER_CERT = "coordinator.pem"
SERVER_KEY = "coordinator.key"
CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def ensure_run_ca(tls_dir: Path, host: str) -> Path:
    """The run's CA and the coordinator's certificate for ``host`` (made once); returns the CA file."""
    if (tls_dir / CA_CERT).is_file() and (tls_dir / SERVER_CERT).is_file() and (tls_dir / SERVER_KEY).is_file():
        return tls_dir / CA_CERT
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TinyTwinError("emulate --tls needs the openssl command (Debian: apt-get install openssl)")
    private_dirs(tls_dir)
    steps = [
        [openssl, "req", "-x509", *CURVE, "-keyout", "ca.key", "-out", CA_CERT, "-days", "30"]
        + ["-subj", "/CN=tinytwin run CA", "-addext", "basicConstraints=critical,CA:TRUE"]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *CURVE, "-keyout", SERVER_KEY, "-out", "coordinator.csr", "-subj", "/CN=tinytwin coordinator"],
        [openssl, "x509", "-req", "-in", "coordinator.csr", "-CA", CA_CERT, "-CAkey", "ca.key", "-CAcreateserial"]
        + ["-out", SERVER_CERT, "-days", "30", "-extfile", "san.cnf"],
    ]
    write_private(tls_dir / "san.cnf", f"subjectAltName={_san(host)}\nextendedKeyUsage=serverAuth\n")
    with private_umask():  # the keys are 0600 from their first byte
        for cmd in steps:
            done = subprocess.run(cmd, cwd=tls_dir, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise TinyTwinError(f"emulate --tls: openssl failed making the run's certificates: {last}")
    return tls_dir / CA_CERT


def run_ca_file(edir: Path) -> Path:
    """Where a run's CA certificate lives (``emulate/tls/ca.pem``): what every client trusts."""
    return edir / TLS_DIR / CA_CERT


def server_context_for(edir: Path, host: str) -> ssl.SSLContext:
    """The coordinator's TLS context, the run's CA made first if needed (``emulate/tls``)."""
    ensure_run_ca(edir / TLS_DIR, host)
    return server_context(edir / TLS_DIR)


def server_context(tls_dir: Path) -> ssl.SSLContext:
    """The coordinator's side: its certificate and key (TLS 1.2 or later)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls_dir / SERVER_CERT, tls_dir / SERVER_KEY)
    # No TLS 1.3 session tickets: devices never resume a session, and a ticket arriving just
    # after the handshake wakes a device's reader thread into a read on the same connection
    # that its main thread is writing HELLO to (one OpenSSL connection is not for two threads).
    ctx.num_tickets = 0
    return ctx


def client_context(ca_file: str | Path) -> ssl.SSLContext:
    """A device's side: trust only the run's CA, check the coordinator's address."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _san(host: str) -> str:
    """The certificate's subjectAltName entry for the coordinator's address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"

"""``python -m twoserver``: run server 1 as its own process.

    python -m twoserver --host H --port P --cert server1.pem --key server1.key --ca ca.pem [--key-file x25519.key]
    python -m twoserver --port P --insecure        # plain TCP, loopback tests only

Certificates come from ``python -m twoserver.certs``. At start server 1
prints the sha256 fingerprint of its X25519 public key; operators put it in
users' config (``strategy.server1_fingerprint``). With ``--key-file`` the key
is kept (mode 0600) so the fingerprint survives restarts.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crypto.dpf_eval import DEFAULT_MAX_CACHE_BYTES
from twoserver.operations import Server1
from schemas.config import TwoServerConfig
from twoserver.transport import TlsFiles, is_loopback, make_server

log = logging.getLogger("secrec.server1")
DEFAULT_FRAC_BITS = TwoServerConfig.frac_bits  # the runs' default scale


def load_or_create_key(path: Path) -> X25519PrivateKey:
    """Server 1's X25519 key from a 0600 file (32 raw bytes), created there if missing."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise SystemExit(f"{path} is readable by others; chmod 600 it")
        raw = path.read_bytes()
        if len(raw) != 32:
            raise SystemExit(f"{path} does not hold a 32-byte X25519 private key")
        return X25519PrivateKey.from_private_bytes(raw)
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return key


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m twoserver",
                                     description="SecEmb server 1 (the non-colluding second server)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", help="server 1's certificate (PEM), from python -m twoserver.certs")
    parser.add_argument("--key", help="its private key (PEM)")
    parser.add_argument("--ca", help="the CA that signs server 0's client certificate (PEM)")
    parser.add_argument("--insecure", action="store_true", help="plain TCP, no authentication: loopback tests only")
    parser.add_argument("--min-users", type=int, default=2,
                        help="server 1's own floor for any sum over users (server 0 may raise it, not lower it)")
    parser.add_argument("--read-timeout", type=float, default=60.0,
                        help="seconds a peer may stall within a frame or the TLS handshake")
    parser.add_argument("--idle-timeout", type=float, default=3600.0,
                        help="seconds a connection may wait between frames")
    parser.add_argument("--path-cache-mib", type=int, default=DEFAULT_MAX_CACHE_BYTES >> 20,
                        help="cap on the round's cached DPF tree paths (MiB); past it keys are re-expanded "
                             "in aggregation: the same bits, about 20%% more CPU")
    parser.add_argument("--min-noise-std", type=float, default=0.0,
                        help="server 1's own floor for the std of its central-DP noise (gradient units, i.e. "
                             "noise_multiplier x clip); with a floor, aggregations without DP are refused")
    parser.add_argument("--frac-bits", type=int, default=None,
                        help=f"with --min-noise-std only: the fixed-point fraction bits of the runs it serves "
                             f"(strategy.frac_bits, default {DEFAULT_FRAC_BITS}); requests with others are refused, "
                             "so server 0 cannot shrink the noise by naming a coarser scale")
    parser.add_argument("--key-file", type=Path, help="keep server 1's X25519 key here (0600) across restarts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    tls_args = (args.cert, args.key, args.ca)
    if args.insecure:
        if any(tls_args):
            parser.error("--insecure excludes --cert/--key/--ca")
        if not is_loopback(args.host):
            parser.error(f"--insecure is refused for the non-loopback host {args.host}")
        tls = None
    elif not all(tls_args):
        parser.error("give --cert, --key and --ca (make them with python -m twoserver.certs), "
                     "or --insecure on loopback")
    else:
        tls = TlsFiles(Path(args.ca), Path(args.cert), Path(args.key))
    if args.min_users < 1:
        parser.error("--min-users must be >= 1")
    if args.path_cache_mib < 0:
        parser.error("--path-cache-mib must be >= 0")
    if not (math.isfinite(args.min_noise_std) and args.min_noise_std >= 0):
        parser.error("--min-noise-std must be a finite number >= 0")
    if args.frac_bits is not None and args.min_noise_std == 0:
        parser.error("--frac-bits pins the scale of server 1's DP noise and only means something with "
                     "--min-noise-std")
    scale = {} if args.frac_bits is None else {"frac_bits": args.frac_bits}  # default and range: Server1's own
    try:  # every file read and the port bound before the fingerprint is printed: an operator sees one error line
        server1 = Server1(min_users=args.min_users, max_cache_bytes=args.path_cache_mib << 20,
                          min_noise_std=args.min_noise_std, **scale,
                          private_key=load_or_create_key(args.key_file) if args.key_file else None)
        srv = make_server(args.host, args.port, server1, tls, args.read_timeout, args.idle_timeout)
    except (OSError, ValueError) as exc:  # a missing or wrong TLS file (ssl.SSLError is an OSError), a port in use
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    print(f"server 1 X25519 public key fingerprint (strategy.server1_fingerprint): {server1.fingerprint}",
          flush=True)
    with srv:
        log.info("server 1 listening on %s:%d (%s)", args.host, args.port,
                 "mutual TLS" if tls else "plain TCP, loopback")
        srv.serve_forever()


if __name__ == "__main__":
    main()

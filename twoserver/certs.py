"""``python -m twoserver.certs --out DIR [--host H ...]``: a local CA and the deployment's certificates.

Writes into DIR (private keys with mode 0600):

* ``ca.pem`` / ``ca.key``           the deployment's CA (keep ``ca.key`` offline in production);
* ``server1.pem`` / ``server1.key``  server 1's TLS server certificate (SAN: every ``--host``);
* ``server0.pem`` / ``server0.key``  server 0's TLS *client* certificate (CN ``server0``), which
  server 1 requires of every peer;
* ``superlink.pem`` / ``superlink.key``  Flower SuperLink's server certificate (SAN: every
  ``--host``) for ``flower-superlink --ssl-certfile superlink.pem --ssl-keyfile superlink.key
  --ssl-ca-certfile ca.pem``; SuperNodes use ``--root-certificates ca.pem`` and ``flwr``
  ``root-certificates = "DIR/ca.pem"`` in its ``config.toml``.

Hosts default to ``127.0.0.1`` and ``localhost``. Keys are ECDSA P-256,
certificates SHA-256 signed by ``cryptography``'s x509 builder. Then:

    python -m twoserver --host H --port P --cert DIR/server1.pem --key DIR/server1.key --ca DIR/ca.pem
    ... strategy.server1_address=H:P strategy.server1_tls_dir=DIR   (server 0)
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALID_DAYS = 365


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """PKCS#8 PEM, created with mode 0600 (never readable by others, not even briefly)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secrec deployment"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, cn: str, *, client: bool,
           hosts: list[str] | None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                     else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


STEMS = ("ca", "server1", "server0", "superlink")


def make_certificates(out: str | Path, hosts: list[str] | None = None, ca_name: str = "secrec local CA",
                      replace: bool = False) -> dict[str, Path]:
    """Write the CA, server 1's, server 0's and the SuperLink's certificates and keys; return their paths.

    A folder that already holds any of them is refused unless ``replace``: a new CA silently replacing the
    one a running SuperLink and server 1 trust cuts every party off from them (FileExistsError).
    """
    out = Path(out)
    present = sorted(p.name for stem in STEMS for p in (out / f"{stem}.pem", out / f"{stem}.key") if p.exists())
    if present and not replace:
        raise FileExistsError(f"{out} already holds {', '.join(present)}; running parties trust that CA, so a new "
                              "one would cut them off: pass --force to replace them all, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    hosts = list(hosts or DEFAULT_HOSTS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = _name(ca_name)
    now = dt.datetime.now(dt.timezone.utc)
    ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    paths: dict[str, Path] = {}

    def save(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        paths[f"{stem}_cert"] = out / f"{stem}.pem"
        paths[f"{stem}_key"] = out / f"{stem}.key"
        paths[f"{stem}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(paths[f"{stem}_key"], key)

    save("ca", ca_cert, ca_key)
    save("server1", *_issue(ca_key, name, "server1", client=False, hosts=hosts))
    save("server0", *_issue(ca_key, name, "server0", client=True, hosts=None))
    save("superlink", *_issue(ca_key, name, "superlink", client=False, hosts=hosts))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m twoserver.certs",
        description="Make a local CA and the TLS certificates of server 1, server 0 (client) and Flower's SuperLink.")
    parser.add_argument("--out", required=True, help="folder to write ca.pem, server1.*, server0.*, superlink.*")
    parser.add_argument("--host", action="append", default=None,
                        help="host name or IP in server 1's and the SuperLink's certificates (repeatable; "
                             "default 127.0.0.1 and localhost; given, it replaces those two)")
    parser.add_argument("--ca-name", default="secrec local CA", help="common name of the CA")
    parser.add_argument("--force", action="store_true", help="replace the certificates and keys already in --out")
    args = parser.parse_args(argv)
    try:
        paths = make_certificates(args.out, args.host, args.ca_name, replace=args.force)
    except FileExistsError as exc:
        parser.error(str(exc))
    for label, path in paths.items():
        print(f"{label}: {path}")


if __name__ == "__main__":
    main()

"""``tongban certs``: a development CA, the gateway's certificate and partner certificates.

For development and tests only; production partners get certificates from the province's CA.
Partner certificates carry the partner id as CN and as a SAN DNS name, which is how the gateway
knows who is calling (``partners.<id>.cert_name`` overrides the name to match).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["add_certs_command", "issue", "make_ca"]


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Replace ``path`` at once (a new file renamed over it): a gateway reading its
    certificate files while they are rotated sees the old file or the new, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    if private:
        tmp.chmod(0o600)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(folder: Path, days: int = 365) -> None:
    """Create ca.pem and ca-key.pem in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tongban development CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(folder / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / "ca-key.pem", _key_pem(key), private=True)


def issue(
    folder: Path, name: str, *, server: bool = False, hosts: list[str] | None = None, days: int = 90
) -> tuple[Path, Path]:
    """Issue ``<name>.pem`` / ``<name>-key.pem`` signed by the CA in ``folder``."""
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts or [name]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _key_pem(key), private=True)
    return cert_path, key_path


def cmd_certs(args: argparse.Namespace) -> int:
    """Run a certs command."""
    folder = Path(args.dir)
    if args.certs_command == "init":
        if (folder / "ca.pem").exists() and not args.force:
            print(
                f"error: {folder / 'ca.pem'} exists (use --force to replace the CA)",
                file=sys.stderr,
            )
            return 1
        make_ca(folder)
        issue(folder, "gateway", server=True, hosts=args.hosts.split(","))
        for partner in filter(None, args.partners.split(",")):
            issue(folder, partner)
        print(f"CA, gateway and partner certificates written to {folder}")
        return 0
    if not (folder / "ca.pem").exists():
        print(f"error: no CA in {folder}: run tongban certs init first", file=sys.stderr)
        return 1
    issue(
        folder, args.name, server=args.server, hosts=args.hosts.split(",") if args.server else None
    )
    print(f"issued {folder / (args.name + '.pem')}")
    return 0


def add_certs_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``certs``."""
    p = sub.add_parser("certs", help="development CA and certificates for mutual TLS")
    cs = p.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    init = cs.add_parser(
        "init", help="create a CA, the gateway certificate and partner certificates"
    )
    init.add_argument("--dir", default="certs")
    init.add_argument("--partners", default="", help="comma-separated partner ids")
    init.add_argument("--hosts", default="localhost,127.0.0.1", help="gateway host names / IPs")
    init.add_argument("--force", action="store_true")
    iss = cs.add_parser("issue", help="issue (or rotate) one certificate with the existing CA")
    iss.add_argument("name", help="partner id (or 'gateway' with --server)")
    iss.add_argument("--dir", default="certs")
    iss.add_argument("--server", action="store_true", help="a server certificate")
    iss.add_argument("--hosts", default="localhost,127.0.0.1")
    for q in (init, iss):
        q.set_defaults(func=cmd_certs)

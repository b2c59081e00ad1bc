"""`serve --tls`: the dashboard's server certificate, issued by the console's own CA (pki.py), for the
names a browser on the centre's network actually uses.

A specific bind (`--bind 10.1.2.3:8443`, `--bind dasbor.kantor:8443`) names that address. A wildcard
bind (`0.0.0.0`, `::`) listens on every address of the machine, so the certificate names the
machine's host name, its FQDN and every address it has now (plus localhost and 127.0.0.1), never the
wildcard itself, which no browser connects to. `--tls-name NAME` adds what the machine cannot know
about itself: a DNS alias, a NAT address. The certificate is issued again when the names change
(a new address from DHCP, another bind).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

from cryptography import x509

from appliance.console import pki
from appliance.console.errors import BadInput

WILDCARDS = ("0.0.0.0", "::")
SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address
IF_INET6 = Path("/proc/net/if_inet6")


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS or host == ""


def check_name(name: str) -> str:
    """An IP address or a DNS host name (lower case, no trailing dot); BadInput (exit 2) otherwise."""
    text = name.strip().rstrip(".").lower()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        labels = text.split(".")
        if not text or len(text) > 253 or not all(
                label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
                and not label.startswith("-") and not label.endswith("-") for label in labels):
            raise BadInput(f"--tls-name {name!r}: neither an IP address nor a DNS host name") from None
        return text
    if address.is_unspecified:
        raise BadInput(f"--tls-name {name!r}: a wildcard address is no name a browser connects to")
    return str(address)


def _useful(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return not (ip.is_unspecified or ip.is_link_local or ip.is_multicast)


def local_addresses() -> list[str]:
    """Every address of this machine a browser elsewhere could use: each interface's IPv4 address
    (ioctl), its global and unique-local IPv6 addresses (/proc/net/if_inet6), and whatever the host
    name and FQDN resolve to. Loopback is left to the caller."""
    found: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, interface in socket.if_nameindex():
            with contextlib.suppress(OSError):
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", interface.encode()[:15]))
                found.append(socket.inet_ntoa(answer[20:24]))
    with contextlib.suppress(OSError):
        for line in IF_INET6.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 4 and len(fields[0]) == 32:
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    for name in {socket.gethostname(), socket.getfqdn()}:
        with contextlib.suppress(OSError, UnicodeError):
            found += [info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)]
    addresses = []
    for address in found:
        address = address.split("%")[0]
        if _useful(address) and not ipaddress.ip_address(address).is_loopback and address not in addresses:
            addresses.append(address)
    return addresses


def certificate_names(host: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """What the dashboard's certificate names, the most telling first (its common name)."""
    if is_wildcard(host):
        names = [socket.gethostname(), socket.getfqdn(), *local_addresses(), "localhost", "127.0.0.1"]
        if host == "::":
            names.append("::1")
    else:
        names = [host, *(["127.0.0.1"] if host == "localhost" else [])]
    out: list[str] = []
    for name in [*names, *extra]:
        with contextlib.suppress(BadInput):
            name = check_name(name)
            if name not in out:
                out.append(name)
    return out


def general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def names_of(cert_pem: bytes) -> list[str]:
    """The names (DNS and IP) a certificate's subjectAltName holds."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def issue(names: list[str], ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `names`, signed by the console's CA (pki.make_server_cert)."""
    common_name = next((name for name in names if len(name) <= 64), "rapat dashboard")
    return pki.make_server_cert(common_name, ca_cert_pem, ca_key_pem, [general_name(name) for name in names])

"""The address guard: which destinations a webhook may be sent to.

Integrators' URLs are untrusted input that the host's servers will call. Only the addresses a
host name resolves to are judged (so encoded literals such as ``2130706433`` or ``0x7f000001``
are caught like any other spelling of 127.0.0.1), every one of them, and the client connects
to the address that was judged. Operators open private ranges explicitly with
``KAIZEN_WEBHOOKS_ALLOWED_NETWORKS``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import idna

from .errors import ForbiddenDestination

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges no webhook may reach unless allowed explicitly, with the reason given when refused.
FORBIDDEN_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("0.0.0.0/8", "'this' network"),
        ("10.0.0.0/8", "private network"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private network"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.31.196.0/24", "AS112"),
        ("192.52.193.0/24", "AMT"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private network"),
        ("192.175.48.0/24", "AS112"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible"),
        ("100::/64", "discard"),
        ("64:ff9b:1::/48", "local NAT64"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local (includes fd00:ec2::254, cloud metadata)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)

NAT64 = ipaddress.ip_network("64:ff9b::/96")
TEREDO = ipaddress.ip_network("2001::/32")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")

#: What opens what a refusal names: said with every refusal, so that it tells what to do.
ALLOW_NETWORK_HINT = "An operator can allow its network with KAIZEN_WEBHOOKS_ALLOWED_NETWORKS."
ALLOW_PORT_HINT = "An operator can allow more with KAIZEN_WEBHOOKS_ALLOWED_PORTS."

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


Resolver = Callable[[str, int], Sequence[IPAddress]]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (TCP), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in seen:
            seen.append(address)
    return seen


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses and ports webhooks may reach."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_ports: frozenset[int] = frozenset({80, 443})

    def allows_network(self, address: IPAddress) -> bool:
        """True if the operator opened a network holding ``address``."""
        return any(
            address.version == net.version and address in net for net in self.allowed_networks
        )

    def refusal(self, address: IPAddress) -> str | None:
        """What ``address`` is if it may not be called (``"a loopback address"``), or None if it
        may."""
        if self.allows_network(address):
            return None
        reason = forbidden_reason(address)
        return None if reason is None else f"{_article(reason)} {reason} address"

    def check_port(self, port: int, addresses: Iterable[IPAddress]) -> None:
        """Refuse ports outside the allowed ones. Any port is open when every one of
        ``addresses`` lies in an allowed network; a name not resolved yet has no addresses, so
        only the allowed ports are open to it."""
        if port in self.allowed_ports:
            return
        inside = [self.allows_network(address) for address in addresses]
        if inside and all(inside):
            return
        allowed = ", ".join(map(str, sorted(self.allowed_ports)))
        raise ForbiddenDestination(
            f"port {port} is not allowed; the allowed ports are {allowed}. {ALLOW_PORT_HINT}"
        )

    def checked_addresses(
        self, host: str, port: int, resolver: Resolver = resolve
    ) -> list[IPAddress]:
        """Resolve ``host`` once and return its addresses if every one may be called."""
        try:
            addresses = list(resolver(host, port))
        except (OSError, UnicodeError, ValueError) as exc:
            raise ForbiddenDestination(f"cannot resolve {host!r}: {exc}") from None
        if not addresses:
            raise ForbiddenDestination(f"{host!r} resolves to no address")
        for address in addresses:
            kind = self.refusal(address)
            if kind is not None:
                if host == str(address):
                    raise ForbiddenDestination(f"{address} is {kind}. {ALLOW_NETWORK_HINT}")
                raise ForbiddenDestination(
                    f"{host!r} resolves to {address}, {kind}. {ALLOW_NETWORK_HINT}"
                )
        self.check_port(port, addresses)
        return addresses


def forbidden_reason(address: IPAddress) -> str | None:
    """The kind of non-public range ``address`` lies in, or None for a public address.

    IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) are judged by the
    IPv4 address they carry.
    """
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4(address):
            reason = forbidden_reason(embedded)
            if reason is not None:
                return f"{reason} (embedded in {address})"
    for network, reason in FORBIDDEN_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    if (
        address.is_private
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
    ):
        return "non-public"
    return None


def _article(kind: str) -> str:
    """The article before ``kind`` ("an unspecified", "an IETF", "a unique local")."""
    vowel = kind[:1].lower() in "aeio" or (kind.startswith("un") and not kind.startswith("uni"))
    return "an" if vowel else "a"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in SIX_TO_FOUR and address.sixtofour is not None:
        found.append(address.sixtofour)
    if address in TEREDO and address.teredo is not None:
        found.extend(address.teredo)
    return found


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as a literal stands for, in any spelling the resolver accepts
    (``127.0.0.1``, ``127.1``, ``0x7f000001``, ``2130706433``, ``[::1]``), or None for a name."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except (OSError, ValueError):
        return None


def is_local_name(host: str) -> bool:
    """True for names that always mean this machine or a private network (``localhost``...)."""
    name = host.lower().rstrip(".")
    return name in LOCAL_NAMES or name.endswith(LOCAL_SUFFIXES)


def ascii_name(host: str) -> str:
    """``host`` as DNS knows it: an internationalized name mapped (UTS #46, which also folds
    fullwidth letters, digits and full stops) and encoded with IDNA, so that look-alike
    spellings of ``localhost`` or of an address are judged, looked up and sent as their ASCII
    form; ASCII names as they are. ValueError if it is not a valid internationalized name."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except UnicodeError as exc:  # idna.IDNAError is one
        raise ValueError(f"not a valid internationalized name: {exc}") from None

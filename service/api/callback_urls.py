"""Which completion-callback URLs the service may call (SSRF).

A callback makes the service send a request wherever a client says: to the cloud's metadata address, the
database, an admin port on loopback. So a URL must be http(s) without credentials, and every address its
host resolves to must be a public one, unless the operator's allow-list names the host or its network
(``webhook_allowed_hosts``). Checked at submit, and again before each delivery (DNS may have changed).
"""

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowList:
    """Host names (exact, any case) and IP networks or addresses (``10.0.0.0/8``, ``127.0.0.1``)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.hosts: set[str] = set()
        self.networks: list[Network] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.hosts.add(entry.strip().lower().rstrip("."))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class Refusal:
    detail: str
    transient: bool = False  # the host did not resolve: it may later


_PRIVATE = (
    "is or resolves to a private, loopback or reserved address; the service calls such addresses only "
    "where its operator allows them (webhook_allowed_hosts)"
)
# IPv6 ranges that carry an IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible): a gateway may forward
# them to that IPv4 address, whatever it is
_CARRIES_IPV4 = tuple(
    ipaddress.ip_network(net) for net in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32", "::/96")
)


def refusal(url: str, allowed: AllowList) -> Refusal | None:
    """Why the service will not call ``url``; ``None`` when it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return Refusal("callback_url is not a valid URL")
    if parts.scheme not in ("http", "https"):
        return Refusal("callback_url must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        return Refusal("callback_url must not carry credentials; the service signs its callbacks instead")
    host = parts.hostname
    if not host:
        return Refusal("callback_url has no host")
    if allowed.allows_host(host):
        return None
    default_port = 443 if parts.scheme == "https" else 80
    try:
        found = socket.getaddrinfo(host, port or default_port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return Refusal(f"callback_url's host {host} does not resolve", transient=True)
    for *_, address_info in found:
        address = _unmapped(ipaddress.ip_address(address_info[0].split("%")[0]))  # no IPv6 zone
        if not allowed.allows_address(address) and not _public(address):
            return Refusal(f"callback_url's host {host} {_PRIVATE}")  # which address: not said
    return None


def _public(address: Address) -> bool:
    return address.is_global and not any(address in network for network in _CARRIES_IPV4)


def _unmapped(address: Address) -> Address:
    """``::ffff:127.0.0.1`` is 127.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address

"""Which completion-callback URLs the service may call (SSRF).

A callback makes the service send a request wherever a client says: to the cloud's metadata address, the
database, an admin port on loopback. So a URL must be http(s) without credentials, and every address its
host resolves to must be a public one, unless the operator's allow-list names the host or its network
(``webhook_allowed_hosts``). Checked at submit, and again before each delivery (DNS may have changed).
"""

import ipaddress
import socket
from collections.abc import Iterable
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


def refusal(url: str, allowed: AllowList) -> str | None:
    """Why the service will not call ``url``; ``None`` when it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "callback_url is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "callback_url must be an http or https URL"
    if parts.username is not None or parts.password is not None:
        return "callback_url must not carry credentials; the service signs its callbacks instead"
    host = parts.hostname
    if not host:
        return "callback_url has no host"
    if allowed.allows_host(host):
        return None
    try:
        found = socket.getaddrinfo(
            host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        return f"callback_url's host {host} does not resolve"
    for *_, address_info in found:
        address = _unmapped(ipaddress.ip_address(address_info[0].split("%")[0]))  # no IPv6 zone
        if not address.is_global and not allowed.allows_address(address):
            return (
                f"callback_url's host {host} resolves to {address}, a private, loopback or reserved address; "
                "the service calls such addresses only where its operator allows them (webhook_allowed_hosts)"
            )
    return None


def _unmapped(address: Address) -> Address:
    """``::ffff:127.0.0.1`` is 127.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address

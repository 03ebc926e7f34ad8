"""What both Ray engines (``annotate --engine ray``, ``rsfiqa score --engine ray``) say and check
before joining a cluster: the extra to install, and a quick TCP probe of ``--ray-address`` (Ray
itself retries an unreachable address for minutes)."""
from __future__ import annotations

import socket

INSTALL_HINT = "pip install 'rsfiqa[ray]'"
CONNECT_TIMEOUT_S = 5.0


def host_port(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``ray://HOST:PORT`` -> (host, port); None for anything else (``auto``, ``local``)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def connection_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` takes no TCP connection within :data:`CONNECT_TIMEOUT_S`, or None."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        return err
    return None

"""Whether a connection is a real Postgres session or goes through a pooler (PgBouncer in transaction mode).

Session features (session advisory locks, `LISTEN`, psycopg's automatic prepared statements) do not survive
a transaction-mode pooler: the next statement may run on another server connection. Asking Postgres is not
enough (the pooler forwards the question to a server connection that looks direct), so the test compares
both ends of the client's own socket with what the server says of the backend that answers:

- over TCP, the connection is direct when the server's view of its peer (`inet_client_addr/port()`) and of
  itself (`inet_server_addr/port()`) are the two ends of the client's socket;
- over a unix socket, when the process at the other end of the socket (`SO_PEERCRED`: the postmaster that
  accepted it) is the parent of the backend that answers (`/proc/<pid>/status`), which needs the server on
  this host and in this pid namespace.

Anything else (a pooler, NAT, a proxy, another host's socket) is "not proven direct": callers then use the
pooler-safe path, which is always correct and only a little slower.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["is_direct_session", "known_direct", "remember_direct"]

_DIRECT: dict[str, bool] = {}
"""Per connection string: whether its connections were proven direct (probed once per process)."""


def known_direct(dsn: str) -> bool | None:
    """What was found for `dsn` in this process, or None when it was not probed yet."""
    return _DIRECT.get(dsn)


def remember_direct(dsn: str, direct: bool) -> None:
    """Record the result of `is_direct_session` for connections to `dsn`."""
    _DIRECT[dsn] = direct


async def is_direct_session(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True when `conn` is proven to be a session of its own on the Postgres server (no pooler between)."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except OSError:
        return False
    with sock:
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return await _tcp_direct(conn, sock)
            if sock.family == socket.AF_UNIX:
                return await _unix_direct(conn, sock)
        except (OSError, ValueError, psycopg.Error):
            return False
    return False


def _same_endpoint(a: tuple[Any, ...], host: Any, port: Any) -> bool:
    if host is None or port is None:
        return False
    return ipaddress.ip_address(str(a[0])) == ipaddress.ip_address(str(host)) and int(a[1]) == int(port)


async def _tcp_direct(conn: psycopg.AsyncConnection[Any], sock: socket.socket) -> bool:
    cur = await conn.execute(
        "select host(inet_client_addr()), inet_client_port(), host(inet_server_addr()), inet_server_port()"
    )
    row = await cur.fetchone()
    if row is None:
        return False
    client_host, client_port, server_host, server_port = row
    return _same_endpoint(sock.getsockname(), client_host, client_port) and _same_endpoint(
        sock.getpeername(), server_host, server_port
    )


async def _unix_direct(conn: psycopg.AsyncConnection[Any], sock: socket.socket) -> bool:
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None:  # not Linux: cannot tell
        return False
    peer_pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i")))[0]
    cur = await conn.execute("select pg_backend_pid()")
    row = await cur.fetchone()
    if row is None:
        return False
    return _parent_pid(int(row[0])) == peer_pid


def _parent_pid(pid: int) -> int | None:
    """The parent of process `pid` (from /proc: a memory read, never blocking), or None."""
    status = Path(f"/proc/{pid}/status").read_text()
    parent = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), None)
    return None if parent is None else int(parent)

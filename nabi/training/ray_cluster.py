"""Connecting to Ray: a local instance or a cluster, refused within seconds when its address does not answer.

Used by ``nabi.studies.ray_executor`` (one Ray task per run of a study) and ``nabi.training.replicas`` (the
replicas of one run as Ray actors). Ray is imported only when used: ``pip install "nabi[ray]"``.
"""
from __future__ import annotations

import socket

_GCS_PORT, _CLIENT_PORT = 6379, 10001  # Ray's default ports: the head node's GCS and the Ray Client server
_CONNECT_TIMEOUT_S = 3.0


def require_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError('--executor ray needs Ray: pip install "nabi[ray]"') from e
    return ray


def _host_port(address: str):
    """``(host, port)`` of a Ray address: ``host[:port]`` (the GCS, 6379) or ``ray://host[:port]`` (10001)."""
    a, port = address.strip(), _GCS_PORT
    if a.startswith("ray://"):
        a, port = a[len("ray://"):], _CLIENT_PORT
    a = a.rstrip("/")
    if a.startswith("["):  # [IPv6]:port
        host, _, rest = a[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else port
    host, sep, p = a.rpartition(":")
    if not sep:
        return a, port
    try:
        return host, int(p)
    except ValueError:
        raise ValueError(f"address {address!r}: the port {p!r} is not a number") from None


def probe_address(address):
    """RuntimeError naming ``address`` unless its TCP port answers within a few seconds ('auto' is not probed)."""
    if address is None or address == "auto":
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise RuntimeError(f"cannot reach a Ray cluster at {address} ({host}:{port}: {e}); start one with "
                           "`ray start --head` on the head node, or leave out --address to use a local "
                           "Ray instance") from None


def _connect(ray, address, log):
    """Connect to the cluster at ``address`` (None: start a local instance). Returns True when we started Ray.

    ``ray.init`` can wait a long time for an address where no Ray runs, so the address's TCP port is
    tried first with a short timeout and an unreachable one is a RuntimeError naming it.
    """
    import logging
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
              "configure_logging": True}
    if address is None:
        ray.init(**kwargs)
        res = ray.cluster_resources()
        log(f"started a local Ray instance ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)")
        return True
    probe_address(address)
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError …
        raise RuntimeError(f"cannot connect to a Ray cluster at {address}: {type(e).__name__}: {e}") from None
    res = ray.cluster_resources()
    log(f"connected to the Ray cluster at {address} ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)")
    return True


def _failure_text(e) -> tuple:
    """``(exception, text)`` for a failed task: the run's own exception where Ray carries it."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return cause, f"{type(cause).__name__}: {cause}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return e, f"{type(e).__name__}: {first}"

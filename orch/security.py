"""Who may talk to orch: the bind check shared by server and agent.

An agent runs whatever command it is sent, so an open API on a network is a
remote shell. Binding beyond loopback therefore needs a token, unless the
operator says --insecure, and then the risk is logged at start. --insecure
means only that: certificate checks are switched off by --tls-skip-verify
alone (``warn_tls_skip_verify``).
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger(__name__)


class InsecureBind(SystemExit):
    """Raised when a non-loopback bind has no token and no --insecure."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(role: str, bind: str, token: str | None, insecure: bool) -> None:
    """Refuse an open API beyond loopback; warn when --insecure allows it."""
    if is_loopback(bind) or token:
        return
    if not insecure:
        raise InsecureBind(
            f"orch {role}: refusing to bind {bind} without --token: anyone who "
            f"can reach it could run commands on the nodes (pass --token, or "
            f"--insecure to accept that)"
        )
    log.warning(
        "%s binds %s without a token (--insecure): its API is open to anyone who can reach it",
        role,
        bind,
    )


def warn_tls_skip_verify(role: str, server: str, skip: bool) -> None:
    """Say loudly at start that the server's certificate goes unchecked."""
    if skip:
        log.warning(
            "%s does not verify the TLS certificate of %s "
            "(--tls-skip-verify): anyone on the path can pose as the "
            "server",
            role,
            server,
        )

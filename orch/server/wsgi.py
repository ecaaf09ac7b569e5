"""The server's waitress: how it is set up (its connections are
``orch.wsgichannel``'s: an answer in one send, no busy loop)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from waitress import create_server

from orch.wsgichannel import use_orch_channels
from orch.wsgiloop import socket_map

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orch.config import ServerConfig
    from orch.wsgichannel import Inline, ParkedReads, TurnWrites, Waiting


def http_server(
    app,
    config: ServerConfig,
    inline: Mapping[tuple[str, str], Inline] | None = None,
    writes: TurnWrites | None = None,
    waiting: Mapping[tuple[str, str], Waiting] | None = None,
    parked_reads: ParkedReads | None = None,
):
    """The waitress server that serves ``app`` (not yet running); ``inline``
    routes are answered without it when their handler can, their ``writes``
    of one loop turn committed together, and their blocking queries
    (``waiting``) parked on its I/O loop, as every other GET's with a query
    that ``parked_reads`` parks."""
    http = create_server(
        app,
        map=socket_map(),  # epoll: a turn visits only the connections that changed
        host=config.bind,
        port=config.port,
        # A UI stream holds its thread for as long as the page is open: the
        # streams get threads of their own on top of the API's.
        threads=config.http_threads + config.ui_max_streams,
        # No lookahead: with it, waitress keeps reading a connection while its
        # request runs, which doubled the server's CPU per request (0.36-0.43
        # ms without, 0.53-0.86 ms with, an empty heartbeat on a loaded host;
        # bench/README.md). A stream asks its socket instead (the channel's
        # check_client_disconnected), at each of its polls.
        channel_request_lookahead=0,
        ident="orch",
        connection_limit=1000,
        channel_timeout=60,
        clear_untrusted_proxy_headers=True,
    )
    use_orch_channels(http, inline, writes, waiting, parked_reads)
    return http

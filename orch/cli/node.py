"""The `orch node drain` and `orch node eligibility` commands."""

from __future__ import annotations

from orch import errors
from orch.cli.commands import EXIT_OK, check_prefix, client_command, print_json, say
from orch.cli.format import matches_short
from orch.client import Client


def resolve_node(client: Client, ident: str) -> str:
    """A node id from the full id, a unique prefix or the short id `node status` prints."""
    if ident:
        try:
            return client.nodes.get(ident)["node_id"]
        except errors.NotFound:
            pass
    check_prefix(ident, "node")
    matches = {
        n["node_id"]
        for n in client.nodes.list()
        if matches_short(str(n.get("node_id", "")), ident)
        or str(n.get("node_id", "")).startswith(ident)
    }
    if len(matches) > 1:
        raise errors.ValidationError(f'node prefix "{ident}" matches {len(matches)} nodes')
    if not matches:
        raise errors.NotFound(f'node "{ident}" not found')
    return matches.pop()


@client_command
def node_drain(args, client: Client) -> int:
    node_id = resolve_node(client, args.id)
    resp = client.nodes.drain(
        node_id,
        deadline_s=args.deadline,
        ignore_system_jobs=args.ignore_system,
        cancel=args.cancel,
    )
    if args.json:
        print_json(resp)
    elif args.cancel:
        say(f'Node "{node_id}" drain canceled; the node is {resp.get("eligibility")}')
    else:
        drain = resp.get("drain") or {}
        say(
            f'Node "{node_id}" draining: {drain.get("remaining_allocations", 0)} allocations '
            f"to move, deadline in {drain.get('deadline_s', 0):g}s; the node is ineligible"
        )
    return EXIT_OK


@client_command
def node_eligibility(args, client: Client) -> int:
    node_id = resolve_node(client, args.id)
    resp = client.nodes.eligibility(node_id, args.enable)
    if args.json:
        print_json(resp)
    else:
        say(f'Node "{node_id}" scheduling eligibility: {resp.get("eligibility")}')
    return EXIT_OK

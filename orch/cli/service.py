"""`orch service list` and `orch service info NAME`: the built-in catalog."""

from __future__ import annotations

from orch.cli.commands import EXIT_OK, client_command, print_json, say
from orch.cli.format import short, table
from orch.client import Client


@client_command
def service_list(args, client: Client) -> int:
    services = client.services.list()
    if args.json:
        print_json(services)
    elif not services:
        say("No services")
    else:
        rows = [
            [s.get("name"), ",".join(s.get("tags") or []), s.get("instances"), s.get("healthy")]
            for s in services
        ]
        say(table(["Name", "Tags", "Instances", "Healthy"], rows))
    return EXIT_OK


@client_command
def service_info(args, client: Client) -> int:
    instances = client.services.instances(args.name, healthy=args.healthy)
    if args.json:
        print_json(instances)
    elif not instances:
        say(f'No {"healthy " if args.healthy else ""}instances of service "{args.name}"')
    else:
        rows = [
            [
                f"{i.get('address')}:{i.get('port')}",
                "healthy" if i.get("healthy") else "not healthy",
                short(i.get("alloc_id")),
                short(i.get("node_id")),
                i.get("job_id"),
                ",".join(i.get("tags") or []),
            ]
            for i in instances
        ]
        say(table(["Address", "Health", "Alloc", "Node", "Job", "Tags"], rows))
    return EXIT_OK

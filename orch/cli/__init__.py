"""The client side of the `orch` command.

``commands`` holds the shared plumbing and the node and alloc commands,
``job`` the job commands, ``run`` `job run`'s live follower and ``format``
the pure text output. Nothing is imported here: the server, agent and dev
launcher import ``orch.cli.format`` alone, without the HTTP client.
"""

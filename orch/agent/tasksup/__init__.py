"""The task supervisor: one small process per agent that starts, reaps and records exec tasks.

Like Nomad's executor, one package: `server` (the process), `client` (the
agent's line to it), `spawn` (how it starts a task). Kept free of imports:
the supervisor process imports only what it needs from here, without site
packages.
"""

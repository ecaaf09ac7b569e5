"""The one validation layer: limits and field rules for every request body.

- ``document``: bytes to JSON values (depth, finite numbers, valid Unicode);
- ``fields``: the rules one field obeys wherever it appears (names, ids,
  integers, strings, timestamps), each error naming the field path;
- ``bodies``: register and heartbeat bodies, resources;
- ``regex``: regex constraints on RE2 (bounded length, linear-time match).

Job bodies (``orch.jobspec``) and agent allocation bodies
(``orch.agent.spec``) are built from the same rules.
"""

"""The cyclic garbage collector of a long-lived daemon (server, agent).

The server keeps every job, evaluation and allocation in memory (the
store's indexes), and each job adds a few dozen container objects that live
on; an agent keeps a runner, its task runners and their states for every
allocation until the server has its end. CPython's defaults (a young pass
every 700 net allocations, a full one whenever the heap grew by a quarter)
scan those survivors again and again, the full passes the whole state each
time (bench/README.md, issue #17: ~5% of the server's CPU per batch job,
~3% of an agent's). They are acyclic records, freed by reference counting
when replaced or purged; the collector is there for the rare cycle. So, as
long-running Python services do (``gc.freeze`` came from Instagram's): what
start-up loaded is kept out of the passes, and the passes run less often.
Cycles are still collected, later.
"""

from __future__ import annotations

import gc

# Net container allocations between young collections (CPython: 700); the
# older generations keep their ratios (10, 10), so a full pass comes ~14x
# more rarely, still only once the heap grew by a quarter since the last.
YOUNG_THRESHOLD = 10_000


def tune(collector=gc) -> None:
    """Freeze what exists now (the loaded state) and space the passes out."""
    collector.collect()  # start-up's own garbage first, not frozen with the rest
    collector.freeze()
    _young, middle, old = collector.get_threshold()
    collector.set_threshold(YOUNG_THRESHOLD, middle, old)

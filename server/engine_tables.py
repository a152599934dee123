"""What every engine worker must hold, checked from the front end: one adapter table, never half of one.

With tensor parallelism every rank holds every steered site (norms are replicated); with pipeline
parallelism each stage holds its own layers' sites. `collective_rpc("fairsteer_slot_table")` returns one
table per worker (server/vllm_plugin/reload.py):

    {"rank": r, "slots": [slot name per adapter index], "sites": [sites this worker steers],
     "digests": [slot_digest of each slot's rows at those sites]}

and these checks turn any disagreement into a list of problems (empty: all agree):

    table_problems(tables, names, sites)   every worker names the same slots as the front end; workers
                                           that steer the same sites hold the same rows; together the
                                           workers steer exactly `sites`
    slot_problems(tables, slot, spec, D)   every worker holds exactly `spec`'s rows in `slot` (None: zeros)

A table written in one worker but not another would serve some requests half-steered (one pipeline
stage steered, the other not) or crash a worker that does not know a slot name: server.admin refuses
both, at start-up and after every write.
"""

from typing import Any

import torch

from server.vllm_plugin.digest import slot_digest


def table_problems(tables: list[dict[str, Any]], names: list[str], sites: tuple[str, ...] | None) -> list[str]:
    problems = []
    for table in tables:
        if table["slots"] != names:
            problems.append(f"engine worker {table.get('rank')} holds adapter slots {table['slots']}, not {names}")
    by_sites: dict[tuple[str, ...], dict[str, Any]] = {}
    for table in tables:
        peer = by_sites.setdefault(tuple(table["sites"]), table)
        for k, (mine, theirs) in enumerate(zip(table["digests"], peer["digests"]), start=1):
            if mine != theirs:
                problems.append(f"engine workers {peer.get('rank')} and {table.get('rank')} steer the same sites "
                                f"but hold different rows in slot {k}")
    held = {site for table in tables for site in table["sites"]}
    if sites is not None and held != set(sites):
        missing, extra = sorted(set(sites) - held), sorted(held - set(sites))
        problems.append(f"the engine workers together steer the wrong sites (missing {missing}, unexpected {extra})")
    return problems


def slot_problems(tables: list[dict[str, Any]], slot: int, spec, hidden: int) -> list[str]:
    """`spec`: the adapter (adapters.spec.SteeringSpec) written into `slot`, or None for a freed slot;
    `hidden`: the model's hidden size."""
    problems = []
    for table in tables:
        if table["digests"][slot - 1] != expected_digest(spec, table["sites"], hidden):
            problems.append(f"engine worker {table.get('rank')} does not hold the rows just written to slot {slot}")
    return problems


def expected_digest(spec, sites: list[str], hidden: int) -> str:
    """The digest a worker steering `sites` reports for a slot holding `spec` (None: an empty slot)."""
    zero = torch.zeros(hidden, dtype=torch.float32)
    rows = []
    for site in sites:
        if spec is not None and site in spec.sites:
            i = spec.site_index(site)
            rows.append((site, spec.a[i], spec.b[i]))
        else:
            rows.append((site, zero, zero))
    return slot_digest(rows)

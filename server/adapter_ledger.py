"""What the API processes of one server share about adapter slots: a generation, in-flight counts, a lock.

With `--api-server-count N` every API process resolves and pins requests itself, but the adapter table
they pin against is the engine's (server/admin.py reads it with `collective_rpc("fairsteer_slot_table")`):
slot names, the live set and a generation that every admin change raises by one, compare-and-swap, in every
worker (server/vllm_plugin/reload.py). What the processes must also share, and cannot ask the engine for
on every request, lives here, in shared memory created by the parent before it spawns them:

    generation      the engine table's generation as of the last finished admin change; a process whose
                    copy is older re-reads the engine's table before it admits a request
    in_flight[k]    requests admitted to slot k (1-based) by any process and not yet answered; an admin
                    change reuses a slot only when it is not live and this is 0
    admit lock      held for microseconds: "my copy is current, count this request" is one step, so no
                    process admits to a slot another process is about to reuse
    change lock     held for a whole admin change (across awaits): one change at a time, server-wide, and
                    the adapter record written by that change's process only

One API process uses the same ledger, in its own memory.
"""

import asyncio
import multiprocessing
from contextlib import asynccontextmanager


class AdapterLedger:
    def __init__(self, capacity: int):
        context = multiprocessing.get_context("spawn")  # vLLM spawns the API processes
        self.capacity = capacity
        self._admit = context.Lock()
        self._change = context.Lock()
        self._generation = context.RawValue("q", 0)
        self._in_flight = context.RawArray("i", max(capacity, 1))

    @property
    def generation(self) -> int:
        with self._admit:
            return self._generation.value

    def admit(self, slot: int | None, generation: int) -> bool:
        """Count a request on `slot` (1-based; None: unsteered) if `generation`, the caller's copy of the
        table, is not older than the last finished change; False: re-read the table and resolve again."""
        with self._admit:
            if generation < self._generation.value:
                return False
            if slot is not None:
                self._in_flight[slot - 1] += 1
            return True

    def release(self, slot: int | None) -> None:
        if slot is not None:
            with self._admit:
                self._in_flight[slot - 1] -= 1

    def in_flight(self, slot: int) -> int:
        with self._admit:
            return self._in_flight[slot - 1]

    def finish_change(self, generation: int) -> None:
        """Publish the generation of a change the engine has committed: from now on every process re-reads."""
        with self._admit:
            self._generation.value = max(self._generation.value, generation)

    @asynccontextmanager
    async def changing(self):
        """One admin change at a time across all API processes (polled: the lock is not asyncio's)."""
        while not self._change.acquire(block=False):
            await asyncio.sleep(0.01)
        try:
            yield
        finally:
            self._change.release()

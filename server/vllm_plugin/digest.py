"""One digest of an adapter slot's rows, computed the same way by the engine workers and the front end.

    slot_digest([(site, a_row, b_row), ...]) -> hex sha256

A worker digests the rows it holds at its own sites (server.vllm_plugin.reload); the front end digests
the rows it wrote, from the adapter file, at that worker's sites (server.admin.AdapterSlots). Equal
digests mean the worker holds exactly what was written, bit for bit.
"""

import hashlib

import torch


def slot_digest(rows) -> str:
    """sha256 over (site, a row, b row) of one slot at the sites of one worker, in that order.

    `rows`: (site, a (D,), b (D,)) with float tensors, hashed as fp32 (the tables' dtype).
    """
    digest = hashlib.sha256()
    for site, a, b in rows:
        digest.update(site.encode())
        for t in (a, b):
            digest.update(t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()

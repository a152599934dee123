"""Per-process steering state of a vLLM worker: who asked for what, and what each token gets.

Two levels, both in buffers allocated once (the punica pattern of vLLM's LoRA: fixed addresses, refilled in
place before every step, so torch.compile and CUDA graphs never see a new tensor):

    rows     (max_num_seqs + 1,)         strength and adapter index per persistent-batch row, written by
                                         the logits processor from vLLM's BatchUpdate (added/removed/moved);
                                         rows at or past the batch size hold 0, so padding maps to "none"
    tokens   (max_num_batched_tokens,)   strength and adapter index per token of the current step, filled
                                         by `refresh_tokens` from the forward context's `query_start_loc`

Adapter index 0 means "no steering"; adapter k ≥ 1 is row k-1 of every steered site's (K, D) tables.
One worker process serves one model, so the state is a module-level singleton.
"""

import torch

from steering_kernels import RowPlan, plan_rows, unsteered_plan


class SteeringState:
    def __init__(self) -> None:
        self.ready = False
        self.any_steered = False      # some row of the current batch has strength > 0 (host-side flag)
        self.num_reqs = 0
        self.plan: RowPlan | None = None  # this step's CPU row plan (every step on CPU), or None on CUDA
        # The served adapter set as the API processes last committed it (server/vllm_plugin/reload.py):
        # None with generation 0 is the start-up set, which every API process has from its settings.
        self.generation = 0
        self.live: dict | None = None

    def allocate(self, max_num_seqs: int, max_num_tokens: int, device: torch.device) -> None:
        """Idempotent for one engine: the model and the logits processor both call it with its config."""
        shape = (max_num_seqs, max_num_tokens, torch.device(device))
        if self.ready and self.shape == shape:
            return
        self.shape, self.device = shape, torch.device(device)
        # Host copies are the source of truth for rows; `finish_update` publishes them to the device.
        self.row_strength_cpu = torch.zeros(max_num_seqs + 1, dtype=torch.float32)
        self.row_index_cpu = torch.zeros(max_num_seqs + 1, dtype=torch.int32)
        self.row_strength = torch.zeros(max_num_seqs + 1, dtype=torch.float32, device=device)
        self.row_index = torch.zeros(max_num_seqs + 1, dtype=torch.int32, device=device)
        self.strength = torch.zeros(max_num_tokens, dtype=torch.float32, device=device)  # (T_max,)
        self.index = torch.zeros(max_num_tokens, dtype=torch.int32, device=device)       # (T_max,)
        self.positions = torch.arange(max_num_tokens, dtype=torch.int64, device=device)
        self.uploads = [_RowUpload(self.row_strength_cpu, self.row_strength),
                        _RowUpload(self.row_index_cpu, self.row_index)]
        self.ready = True

    # ---- rows: driven by the logits processor's update_state ----------------------------------------

    def set_row(self, row: int, strength: float, index: int) -> None:
        self.row_strength_cpu[row] = strength
        self.row_index_cpu[row] = index

    def clear_row(self, row: int) -> None:
        self.set_row(row, 0.0, 0)

    def move_row(self, src: int, dst: int) -> None:
        """One-way move (vLLM's condense): dst takes src's values and src becomes empty."""
        self.set_row(dst, float(self.row_strength_cpu[src]), int(self.row_index_cpu[src]))
        self.clear_row(src)

    def swap_rows(self, i: int, j: int) -> None:
        si, ii = float(self.row_strength_cpu[i]), int(self.row_index_cpu[i])
        self.set_row(i, float(self.row_strength_cpu[j]), int(self.row_index_cpu[j]))
        self.set_row(j, si, ii)

    def finish_update(self, batch_size: int) -> None:
        """Publish the row tables to the device: outside any captured graph, into fixed buffers."""
        self.num_reqs = batch_size
        steered = (self.row_strength_cpu[:batch_size] != 0) & (self.row_index_cpu[:batch_size] != 0)
        self.any_steered = bool(steered.any())   # host tensors: no device read
        for upload in self.uploads:
            upload.run()

    # ---- tokens: once per forward, before the (possibly compiled) decoder runs ----------------------

    def refresh_tokens(self, num_tokens: int, query_start_loc: torch.Tensor | None) -> None:
        """Fill the per-token strength and index of this step.

        Args:
            num_tokens: tokens in this forward, padding included.
            query_start_loc: (R + 1,) cumulative token offsets of the batch rows, or None for a
                dummy/profiling run (then every token is unsteered).
        """
        # CPU may skip work when nothing is steered; on CUDA this code can be captured in a full CUDA graph,
        # so it must not branch on per-step values: the same device ops run every step.
        skip = self.device.type == "cpu" and not self.any_steered
        if num_tokens > self.strength.numel():
            raise RuntimeError(f"a step of {num_tokens} tokens exceeds the steering buffers "
                               f"({self.strength.numel()} = max_num_batched_tokens)")
        self.plan = None
        if query_start_loc is None or skip:
            self.strength[:num_tokens].zero_()
            self.index[:num_tokens].zero_()
            if self.device.type == "cpu":  # the fused norm op still runs: it needs to know nothing is steered
                self.plan = unsteered_plan(num_tokens)
            return
        ends = query_start_loc[1:].to(device=self.device, dtype=torch.int64)   # (R,)
        # Token t belongs to the first row whose end exceeds t; tokens past the last end (padding) map
        # to row R, and rows from num_reqs on hold zeros, so padding is never steered.
        rows = torch.searchsorted(ends, self.positions[:num_tokens], right=True)
        rows.clamp_(max=self.row_strength.numel() - 1)
        torch.index_select(self.row_strength, 0, rows, out=self.strength[:num_tokens])
        torch.index_select(self.row_index, 0, rows, out=self.index[:num_tokens])
        if self.device.type == "cpu":  # one row plan per step, shared by every site (see steering_kernels)
            self.plan = plan_rows(self.strength[:num_tokens], self.index[:num_tokens])


class _RowUpload:
    """Copies one host row table into its fixed device buffer; on CUDA asynchronously, through two pinned buffers.

    A copy from pageable memory would block the host until the stream drained (no overlap with the GPU's step).
    So each update writes one page-locked buffer and queues its copy to the device; the next update writes the
    other one, and before reusing a buffer it waits for that buffer's own copy (queued two updates earlier, so
    normally long done): the host never rewrites memory a queued copy may still read, and nothing is allocated
    per update. The CUDA branch has not run on a GPU yet.
    """

    def __init__(self, host: torch.Tensor, device_table: torch.Tensor) -> None:
        self.host, self.device_table = host, device_table
        if device_table.is_cuda:
            self.pinned = [torch.empty(host.shape, dtype=host.dtype, pin_memory=True) for _ in range(2)]
            self.copied = [torch.cuda.Event() for _ in range(2)]   # an event never recorded counts as done
            self.turn = 0

    def run(self) -> None:
        if not self.device_table.is_cuda:
            self.device_table.copy_(self.host)
            return
        pinned, copied = self.pinned[self.turn], self.copied[self.turn]
        copied.synchronize()
        pinned.copy_(self.host)
        self.device_table.copy_(pinned, non_blocking=True)
        copied.record()                      # on the current stream, behind the copy queued there
        self.turn = 1 - self.turn


STATE = SteeringState()

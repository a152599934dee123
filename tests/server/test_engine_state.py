"""The plugin's per-row and per-token bookkeeping, without an engine (vLLM's BatchUpdate semantics)."""

import pytest
import torch

from server.engine_boundary import INTERNAL_ADAPTER_KEY as ADAPTER_KEY
from server.engine_boundary import INTERNAL_STRENGTH_KEY as STRENGTH_KEY
from server.vllm_plugin.processor import SteeringParamError, parse_steering
from server.vllm_plugin.state import SteeringState


def state_with_rows(rows: list[tuple[float, int]]) -> SteeringState:
    state = SteeringState()
    state.allocate(max_num_seqs=8, max_num_tokens=32, device=torch.device("cpu"))
    for row, (strength, index) in enumerate(rows):
        state.set_row(row, strength, index)
    state.finish_update(len(rows))
    return state


def test_tokens_take_their_rows_values_and_padding_is_unsteered():
    state = state_with_rows([(0.5, 1), (0.0, 0), (1.0, 2)])
    query_start_loc = torch.tensor([0, 3, 4, 6, 6])   # rows of 3, 1, 2 tokens, then a padded empty row
    state.refresh_tokens(8, query_start_loc)           # 2 padding tokens past the last row
    assert state.strength[:8].tolist() == [0.5, 0.5, 0.5, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert state.index[:8].tolist() == [1, 1, 1, 0, 2, 2, 0, 0]


def test_moves_swaps_and_removals_follow_the_batch():
    state = state_with_rows([(0.1, 1), (0.2, 2), (0.3, 1)])
    state.clear_row(0)                                  # request in row 0 finished
    state.move_row(2, 0)                                # condense: the last row fills the gap
    state.swap_rows(0, 1)
    state.finish_update(2)
    assert torch.allclose(state.row_strength[:3], torch.tensor([0.2, 0.3, 0.0]))
    assert state.row_index[:3].tolist() == [2, 1, 0]
    state.refresh_tokens(3, torch.tensor([0, 1, 2]))
    assert state.index[:3].tolist() == [2, 1, 0], "a token past the batch must not read a stale row"


def test_no_steered_row_zeroes_the_tokens():
    state = state_with_rows([(0.7, 1)])
    state.refresh_tokens(4, torch.tensor([0, 4]))
    state.clear_row(0)
    state.finish_update(1)
    state.refresh_tokens(4, torch.tensor([0, 4]))
    assert not state.any_steered and state.strength[:4].eq(0).all() and state.index[:4].eq(0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned double buffer is the CUDA upload path")
def test_cuda_row_uploads_queued_behind_a_busy_stream_each_carry_their_own_update():
    # Each update's device copy is queued while the GPU is still busy; a device-side snapshot queued after it
    # must see that update's values, not a later one's (which a reused, rewritten pinned buffer would give).
    state = SteeringState()
    state.allocate(max_num_seqs=8, max_num_tokens=32, device=torch.device("cuda"))
    torch.cuda._sleep(200_000_000)                      # keep the stream busy while the host runs ahead
    expected, snapshots = [], []
    for update in range(6):
        for row in range(8):
            state.set_row(row, 0.1 * (update + 1) + row, (update + row) % 3)
        state.finish_update(8)
        expected.append((state.row_strength_cpu.clone(), state.row_index_cpu.clone()))
        snapshots.append((state.row_strength.clone(), state.row_index.clone()))
    torch.cuda.synchronize()
    for (strength, index), (device_strength, device_index) in zip(expected, snapshots, strict=True):
        assert torch.equal(device_strength.cpu(), strength) and torch.equal(device_index.cpu(), index)


@pytest.mark.parametrize("extra, expected", [
    (None, (0.0, 0)),
    ({}, (0.0, 0)),
    ({ADAPTER_KEY: "b", STRENGTH_KEY: 0.5}, (0.5, 2)),
    ({ADAPTER_KEY: "a", STRENGTH_KEY: 1}, (1.0, 1)),
    ({ADAPTER_KEY: "a", STRENGTH_KEY: 0.0}, (0.0, 0)),
    ({ADAPTER_KEY: "a"}, (0.0, 0)),
    ({STRENGTH_KEY: 0}, (0.0, 0)),
])
def test_parse_steering_maps_names_to_one_based_indices(extra, expected):
    assert parse_steering(extra, ("a", "b")) == expected


def test_parse_steering_without_known_adapters_refuses_steering():
    with pytest.raises(SteeringParamError, match="engine_kwargs"):
        parse_steering({ADAPTER_KEY: "a", STRENGTH_KEY: 0.5}, None)

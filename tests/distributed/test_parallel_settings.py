"""fairsteer's defaults for parallel engines on CPU (server/settings.py parallel_defaults): compiled
pipeline parallelism unless the user chose, nothing else changed."""

import pytest

from server.settings import parallel_defaults


@pytest.mark.parametrize("options, expected", [
    ([], []),
    (["--tensor-parallel-size", "2"], []),                         # vLLM's CPU platform picks mp itself
    (["--pipeline-parallel-size", "2"], ["--no-enforce-eager"]),  # eager PP fails in vLLM 0.32 (CPU)
    (["--pipeline-parallel-size=2"], ["--no-enforce-eager"]),
    (["-pp", "2", "--tensor-parallel-size", "2"], ["--no-enforce-eager"]),
    (["--pipeline-parallel-size", "2", "--enforce-eager"], []),   # the user's choice stands
    (["--pipeline-parallel-size", "2", "--no-enforce-eager"], []),
    (["--pipeline-parallel-size", "1"], []),
])
def test_pipeline_parallelism_runs_compiled_on_cpu_unless_the_user_chose(options, expected):
    assert parallel_defaults(options, on_cpu=True) == expected


def test_gpu_options_are_left_to_vllm():
    assert parallel_defaults(["--pipeline-parallel-size", "2"], on_cpu=False) == []

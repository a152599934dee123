"""fairsteer's defaults for parallel engines on CPU (server/settings.py parallel_defaults): the
multiprocessing executor for several workers (vLLM refuses PP with `uni`: "Pipeline Parallelism without
Ray distributed executor or multiprocessing executor or external launcher is not supported") and
compiled pipeline parallelism, each unless the user chose."""

import pytest

from server.settings import parallel_defaults

MP = ["--distributed-executor-backend", "mp"]


@pytest.mark.parametrize("options, expected", [
    ([], []),
    (["--tensor-parallel-size", "2"], MP),
    (["--pipeline-parallel-size", "2"], MP + ["--no-enforce-eager"]),  # eager PP fails in vLLM 0.32 (CPU)
    (["--pipeline-parallel-size=2"], MP + ["--no-enforce-eager"]),
    (["-pp", "2", "--tensor-parallel-size", "2"], MP + ["--no-enforce-eager"]),
    (["--pipeline-parallel-size", "2", "--enforce-eager"], MP),       # the user's choices stand
    (["--pipeline-parallel-size", "2", "--no-enforce-eager", "--distributed-executor-backend", "ray"], []),
    (["--pipeline-parallel-size", "1"], []),
])
def test_pipeline_parallelism_runs_compiled_on_cpu_unless_the_user_chose(options, expected):
    assert parallel_defaults(options, on_cpu=True) == expected


def test_gpu_options_are_left_to_vllm():
    assert parallel_defaults(["--pipeline-parallel-size", "2"], on_cpu=False) == []


@pytest.mark.parametrize("options, words", [
    (["--data-parallel-size", "2"], "data-parallel client"),       # writes could not be checked everywhere
    (["-dp=2"], "data-parallel client"),
])
def test_run_time_adapters_refuse_what_they_cannot_keep_consistent(tmp_path, options, words):
    from server.errors import ServeConfigError
    from server.security import DEFAULT_MAX_REQUEST_BYTES, SecuritySettings
    from server.settings import ServeOptions, _admin

    admin_key = "admin-key-0123456789"
    security = SecuritySettings.from_options(None, admin_key, DEFAULT_MAX_REQUEST_BYTES)
    serve = ServeOptions(adapter_dirs=(str(tmp_path),), admin_key=admin_key)
    with pytest.raises(ServeConfigError, match=words):
        _admin(serve, security, {}, options)
    assert _admin(serve, security, {}, ["--tensor-parallel-size", "2", "--pipeline-parallel-size", "2"])
    assert _admin(ServeOptions(), security, {}, options) is None, "without --adapter-dir nothing is refused"


def test_run_time_adapters_are_accepted_with_several_api_processes(tmp_path):
    from server.security import DEFAULT_MAX_REQUEST_BYTES, SecuritySettings
    from server.settings import ServeOptions, _admin

    admin_key = "admin-key-0123456789"
    security = SecuritySettings.from_options(None, admin_key, DEFAULT_MAX_REQUEST_BYTES)
    serve = ServeOptions(adapter_dirs=(str(tmp_path),), admin_key=admin_key)
    assert _admin(serve, security, {}, ["--api-server-count", "2"]).adapter_dirs == (tmp_path.resolve(),)

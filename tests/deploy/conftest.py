"""Fixtures for the deployment tests: the kustomize renders of deploy/k8s and the real `fairsteer serve`
parser that the container arguments must satisfy."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _kustomize(path: str) -> list[dict]:
    """`kubectl kustomize deploy/k8s/PATH`, parsed. Fails (does not skip) without kubectl: it is installed
    on the project's machines (shared/DESIGN.md) and these checks are part of `make test`."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is missing: install kubectl 1.32"
    out = subprocess.run([kubectl, "kustomize", str(K8S / path)], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


class _Renders(dict):
    """{kustomization path under deploy/k8s: its rendered objects}, each rendered once, when first read."""

    def __missing__(self, path: str) -> list[dict]:
        self[path] = _kustomize(path)
        return self[path]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return _Renders()


@pytest.fixture(scope="session")
def serve_parser():
    """The real `fairsteer` argument parser."""
    from cli.main import build_parser

    return build_parser()

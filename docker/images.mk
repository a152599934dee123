# Container images (issue 16), included by the Makefile. Built with podman on local stand-ins for the
# base images where no registry can be reached (docker/local/images.sh; installs podman if missing):
#   make image-cpu       localhost/fairsteer:VERSION-cpu; tests/deploy/test_image_cpu.py runs it
#   make image-gpu       localhost/fairsteer:VERSION on a vllm==0.32.0 stand-in, then checks inside it
#                        what needs no GPU (docker/local/check_gpu_image.sh). Not in CI: several GB
#   make image-router    localhost/fairsteer-router:VERSION (vllm-router), for deploy/k8s/overlays/router
#   make test-image-cpu  build the CPU image and run its test
# On a Docker host with registry access, `make docker-build` builds the GPU image on vLLM's own.
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)

.PHONY: image-cpu image-gpu image-router test-image-cpu

image-cpu:
	docker/local/images.sh cpu

image-gpu:
	docker/local/images.sh gpu
	docker/local/check_gpu_image.sh localhost/fairsteer:$(IMAGE_VERSION)

image-router:
	docker/local/images.sh router

test-image-cpu: setup image-cpu
	$(PY) -m pytest -q tests/deploy/test_image_cpu.py

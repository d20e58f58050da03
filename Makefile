# Two commands work on a fresh Debian/Ubuntu machine (as root, or with sudo available):
#   make demo   a local cluster, S3 and Prefect serving the pipeline's deployments; a backup and
#               a restore drill run through them
#   make test   lint, type-check, the image (where a Docker engine answers) and the whole suite
#   make image  the jaco Docker image (jaco:<version>), built without a registry: docs/image.md
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := etcd-server etcd-client bubblewrap age openssh-client
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# jaco._native (native/, Rust) is compiled by `make venv`: rustup's cargo where it is installed,
# else Debian's (`make deps` installs it when no cargo is found).
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps venv test lint typecheck demo proto clean bench image test-image mutation lock

deps:
	@missing=""; \
	for b in etcd:etcd-server etcdctl:etcd-client bwrap:bubblewrap age:age ssh-keygen:openssh-client \
	         cargo:cargo; do \
	  command -v $${b%%:*} >/dev/null || missing="$$missing $${b##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# constraints.txt pins every package to what the suite last ran green with: CI and a fresh clone
# install exactly that, not whatever PyPI holds that day. `make lock` moves to the newest
# versions pyproject.toml allows (then run make test before committing the new pins).
$(VENV)/.installed: pyproject.toml constraints.txt native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check jaco flows deployments tests bench infra
	$(VENV)/bin/ruff format --check jaco flows deployments tests bench infra

typecheck: venv
	$(VENV)/bin/mypy jaco flows deployments

# Two workers (pytest-xdist): a module runs whole on one, the Docker modules on the same one
# (tests/conftest.py); TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
test: deps venv lint typecheck test-image
	$(VENV)/bin/pytest -q --durations=20 -n $(TEST_WORKERS)

# The drill image the docker tests run, built from this checkout; without a Docker engine those
# tests are skipped (and say why), so this is too.
test-image:
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory image; \
	else echo "no Docker engine answers: the image is not built, the docker tests will skip"; fi

demo: deps venv
	$(PY) -m infra.demo

# Each safety check broken in turn on a scratch copy, with the tests that must notice
# (docs/testing.md); not part of `make test`. One group: make mutation MUTATION_ARGS="--only drill"
mutation: deps venv
	$(PY) -m infra.mutation $(MUTATION_ARGS)

# Stage-by-stage benchmarks against their references at 64 MiB, 512 MiB and 2 GiB
# (one size: $(PY) -m bench.run --size 64). Results also go to bench/results/.
bench: deps venv
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.stream

# Debian bookworm base from mmdebstrap -> docker import -> infra/image/Dockerfile; the wheels
# come from the host, pinned to $(VENV). Build products go to build/image/.
image: deps venv
	PYTHON=$(PY) infra/image/build.sh

lock:
	rm -rf $(VENV).lock
	python3 -m venv $(VENV).lock
	$(VENV).lock/bin/pip install -q --upgrade pip
	$(VENV).lock/bin/pip install -q -e '.[dev]'
	{ sed -n '1,2p' constraints.txt; $(VENV).lock/bin/pip freeze --exclude-editable \
	  | grep -v -e '^#' -e '^-e ' -e ' @ '; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(VENV).lock

# Regenerates jaco/v1/ from proto/ (the generated modules are committed).
proto: venv
	PATH=$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iproto --python_out=. \
	  --grpc_python_out=. --mypy_out=. proto/jaco/v1/jaco.proto

# --one-file-system: never delete through a mount an interrupted mmdebstrap left behind.
clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
	rm -rf --one-file-system build/image

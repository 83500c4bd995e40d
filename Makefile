# Quick start: `make demo` (sets up and runs the main job), `make test` (every test).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,mpi]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/hcollectives demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/hcollectives bench --out bench.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info

# --- Hadoop mini-cluster (HDFS + YARN/MR in one JVM; see minicluster/README.md) ---
.PHONY: minicluster minicluster-stop minicluster-status minicluster-build

minicluster:
	minicluster/bin/minicluster.sh start

minicluster-stop:
	minicluster/bin/minicluster.sh stop

minicluster-status:
	minicluster/bin/minicluster.sh status

minicluster-build:
	minicluster/bin/minicluster.sh build force

# --- Docker cluster (docker/compose.yaml; see docs/docker.md) ---
.PHONY: docker-engine docker-engine-stop docker-images docker-clean compose-up compose-down

# Debian's docker.io + docker-compose (installed if missing), dockerd without firewall changes.
docker-engine:
	docker/engine.sh start

docker-engine-stop:
	docker/engine.sh stop

# The base image (debootstrap), Hadoop's jars (Maven) and the cluster's image; cached.
docker-images: docker-engine
	docker/build.sh all

docker-clean:
	docker/build.sh clean

# Builds what is missing, starts the cluster, waits for HDFS (out of safe mode) and 2 NodeManagers.
compose-up:
	docker/compose.sh up

compose-down:
	docker/compose.sh down

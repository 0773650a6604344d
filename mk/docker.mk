# Containers and Docker Swarm (docs/docker.md). The stack is opt-in: `make up` stays the local,
# container-free run; `make swarm-up MODEL_DIR=...` deploys the same product as a swarm stack.
MODEL_DIR ?=
REPLICAS ?= 3

.PHONY: docker-engine docker-base swarm-up swarm-scale swarm-status swarm-down

# The e2e test needs an engine; where none can be started (no root, no apt) it is skipped with a reason.
TEST_SETUP_PARTS += docker-engine

docker-engine: ## install and start a Docker engine when missing (root + apt)
	@docker_manual/start_docker.sh || echo "warning: no Docker engine; tests marked docker will be skipped"

docker-base: docker-engine ## build the offline base image (debootstrap, once)
	docker_manual/build_base_image.sh

swarm-up: setup docker-engine ## deploy or roll the stack to MODEL_DIR (a model bundle)
	@test -n "$(MODEL_DIR)" || { echo "usage: make swarm-up MODEL_DIR=path/to/bundle" >&2; exit 2; }
	docker_manual/start_docker.sh --swarm
	docker_manual/start_registry.sh
	$(VENV)/bin/dkt swarm deploy --model-dir "$(MODEL_DIR)"

swarm-scale: setup ## scale inference to REPLICAS
	$(VENV)/bin/dkt swarm scale --replicas $(REPLICAS)

swarm-status: setup ## services, replicas, served model version
	$(VENV)/bin/dkt swarm status

swarm-down: setup ## remove the stack
	$(VENV)/bin/dkt swarm down

# Serving (docs/serving.md): the BentoML inference service, the packer, the student web page.
# `make serving-up MODEL_DIR=...` packs a bundle and runs both locally; `make serving-down` stops them.
SERVICE_PORT ?= 3000
CLIENT_PORT ?= 8000
RUN_DIR ?= run

.PHONY: chromium serving-up serving-down serve-bench

# The browser tests drive Debian's chromium through Playwright (the pip package; never `playwright install`).
TEST_SETUP_PARTS += chromium

# `make test` installs its parts side by side: mk/apt-install.sh runs one apt-get at a time (Docker's included).
# No chromium and no way to install it stops `make test`: the browser tests are part of every run.
chromium: ## install Debian's chromium for the headless browser tests (skipped when present)
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		mk/apt-install.sh --no-install-recommends chromium fonts-dejavu-core; \
	else echo "error: chromium missing and cannot be installed (needs root + apt-get)" >&2; exit 1; fi

serving-up: setup ## pack MODEL_DIR (optional), start the service on SERVICE_PORT and the web page on CLIENT_PORT
	@mkdir -p $(RUN_DIR) var
	@if [ -n "$(MODEL_DIR)" ]; then $(VENV)/bin/dkt pack --model-dir "$(MODEL_DIR)" --no-bento; fi
	@test -f $(RUN_DIR)/bentoml.pid && kill -0 $$(cat $(RUN_DIR)/bentoml.pid) 2>/dev/null || { \
		setsid $(VENV)/bin/dkt serve --port $(SERVICE_PORT) \
			> $(RUN_DIR)/bentoml.log 2>&1 & echo $$! > $(RUN_DIR)/bentoml.pid; }
	@test -f $(RUN_DIR)/client.pid && kill -0 $$(cat $(RUN_DIR)/client.pid) 2>/dev/null || \
		DKT_INFERENCE_URL=http://127.0.0.1:$(SERVICE_PORT) $(VENV)/bin/gunicorn -w 2 -b 127.0.0.1:$(CLIENT_PORT) \
			--daemon --pid $(RUN_DIR)/client.pid --log-file $(RUN_DIR)/client.log 'client:create_app()'
	@echo "service http://127.0.0.1:$(SERVICE_PORT) (log $(RUN_DIR)/bentoml.log); page http://127.0.0.1:$(CLIENT_PORT)"

serving-down: ## stop what serving-up started
	-@test -f $(RUN_DIR)/client.pid && kill $$(cat $(RUN_DIR)/client.pid) && rm -f $(RUN_DIR)/client.pid || true
	-@test -f $(RUN_DIR)/bentoml.pid && kill -- -$$(cat $(RUN_DIR)/bentoml.pid) && rm -f $(RUN_DIR)/bentoml.pid || true

serve-bench: setup ## serving benchmark against a naive baseline (MODEL_DIR=bundle)
	@test -n "$(MODEL_DIR)" || { echo "usage: make serve-bench MODEL_DIR=path/to/bundle" >&2; exit 2; }
	$(PY) bench/serve_bench.py --model-dir "$(MODEL_DIR)"

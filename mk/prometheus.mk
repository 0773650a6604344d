# Prometheus (docs/prometheus.md): `make up` starts one on DKT_PROMETHEUS_PORT (9090) scraping the inference
# service, the client and itself, with the alert rules of config/prometheus/alerts.yml; `make down` stops it.
.PHONY: prometheus prometheus-check

# Debian's package brings both binaries: `prometheus` (make up, the live-server test) and `promtool` (the
# config and rule checks). The tests fail, never skip, without them: part of every `make test`.
TEST_SETUP_PARTS += prometheus

# Installed side by side with the other parts: mk/apt-install.sh runs one apt-get at a time.
prometheus: ## install Debian's prometheus and promtool (skipped when present)
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then \
		echo "prometheus: $$(command -v prometheus)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		mk/apt-install.sh --no-install-recommends prometheus; \
	else echo "error: prometheus/promtool missing and cannot be installed (needs root + apt-get)" >&2; exit 1; fi

up:: prometheus
	@$(PY) -m pipeline.prometheus up

down::
	@if [ -x $(PY) ]; then $(PY) -m pipeline.prometheus down; fi

prometheus-check: prometheus ## promtool: check the config and the alert rules, run the rules' unit tests
	promtool check config config/prometheus/prometheus.yml
	promtool test rules config/prometheus/alerts_test.yml

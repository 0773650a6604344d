# The Prometheus of the swarm stack: Debian's prometheus binary, copied from this host (`make prometheus`
# installs the package), with the swarm's scrape config and the repository's alert rules. Nothing is pulled or
# downloaded. The context is assembled by pipeline/swarm_images.py (config/swarm.json images.prometheus).
ARG BASE_IMAGE=local/python:3.11-bookworm
FROM ${BASE_IMAGE}
# The binary links only against the C library, which the base (Debian bookworm, as the host) has.
COPY bin/prometheus /usr/local/bin/prometheus
COPY swarm.yml /etc/prometheus/prometheus.yml
COPY alerts.yml /etc/prometheus/alerts.yml
# The TSDB lives in the task's container (docs/docker.md): no named volume, which `docker stack rm` would leave.
RUN prometheus --version \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
ARG VERSION=dev
LABEL org.opencontainers.image.title="dkt-prometheus" org.opencontainers.image.version="${VERSION}"
USER nobody
WORKDIR /prometheus
EXPOSE 9090
CMD ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=:9090", "--web.enable-lifecycle"]

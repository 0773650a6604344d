# The proxy image: haproxy from Debian, the single task that publishes host ports (mode=host).
ARG BASE_IMAGE=local/python:3.11-bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
ENV DKT_PROXY_CLIENT_PORT=8080 DKT_PROXY_INFERENCE_PORT=3000 \
    DKT_CLIENT_SERVICE=client DKT_CLIENT_PORT=8000 DKT_CLIENT_HEALTH_PATH=/ \
    DKT_INFERENCE_SERVICE=inference DKT_INFERENCE_PORT=3000
ARG VERSION=dev
LABEL org.opencontainers.image.title="dkt-proxy" org.opencontainers.image.version="${VERSION}"
RUN haproxy -c -f /etc/haproxy/haproxy.cfg
HEALTHCHECK --interval=5s --timeout=3s --retries=3 \
  CMD python3 -c "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['DKT_PROXY_CLIENT_PORT'])), 2)"
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]

# The client image: the Flask app under gunicorn. It reaches inference by service name
# (DKT_INFERENCE_URL, default http://inference:3000 inside the stack).
# Build context is assembled by pipeline/swarm_images.py: venv.tar (the app venv's files for the client's pins),
# src/ (client code + data).
ARG BASE_IMAGE=local/python:3.11-bookworm
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    DKT_INFERENCE_URL=http://inference:3000 \
    DKT_CLIENT_DB=/data/client.db \
    DKT_QUESTIONS=/app/questions.csv \
    DKT_ENV=production \
    DKT_PORT=8000 \
    GUNICORN_WORKERS=2 \
    GUNICORN_THREADS=4

# The app venv's installed files for the client's pins, as in docker/inference-runtime.Dockerfile (no pip here).
# dkt-venv-finish checks the files are for this python and makes /opt/venv a venv around them.
ADD venv.tar /opt/venv/
COPY requirements.txt /opt/venv/requirements.txt
COPY venv-finish.sh /usr/local/bin/dkt-venv-finish
RUN dkt-venv-finish \
 && useradd --system --create-home --home-dir /home/dkt dkt \
 && mkdir -p /data && chown dkt /data

WORKDIR /app
COPY src/ /app/
ARG VERSION=dev
LABEL org.opencontainers.image.title="dkt-client" org.opencontainers.image.version="${VERSION}"
# The stack runs it as the owner of the bind-mounted answer folder instead (docker-compose.yml `user:`); any uid
# works: the code is world-readable and nothing but /data and /tmp is written.
USER dkt
EXPOSE 8000
# Threads: a page waits on inference; with sync workers two slow pages would leave no worker for the
# proxy's health check, and the proxy would take the only client out of service.
HEALTHCHECK --interval=3s --timeout=3s --start-period=20s --retries=3 \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ['DKT_PORT'], timeout=2)"
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:$DKT_PORT --workers $GUNICORN_WORKERS --threads $GUNICORN_THREADS --access-logfile - 'client:create_app()'"]

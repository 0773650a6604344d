# The inference image: the BentoML service with one packed model baked in, on top of the runtime
# image (docker/inference-runtime.Dockerfile). Context (assembled by `python -m pipeline.swarm`):
#   src/ (service code + dkt package), model.bentomodel (`bentoml models export` of the packed model)
ARG RUNTIME_IMAGE
FROM ${RUNTIME_IMAGE}

WORKDIR /app
COPY src/ /app/

ARG MODEL_TAG
ARG MODEL_VERSION
COPY model.bentomodel /tmp/model.bentomodel
RUN test -n "$MODEL_TAG" || { echo "error: build argument MODEL_TAG is required" >&2; exit 1; } \
 && bentoml models import /tmp/model.bentomodel >/dev/null \
 && rm /tmp/model.bentomodel \
 && chown -R dkt /opt/bentoml

ENV DKT_MODEL_TAG=${MODEL_TAG} \
    DKT_MODEL_VERSION=${MODEL_VERSION} \
    DKT_PORT=3000
LABEL org.opencontainers.image.title="dkt-inference" \
      org.opencontainers.image.version="${MODEL_VERSION}"
USER dkt
EXPOSE 3000
HEALTHCHECK --interval=3s --timeout=3s --start-period=240s --retries=3 \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ['DKT_PORT'], timeout=2)"
CMD ["sh", "-c", "exec bentoml serve service:DKTService --host 0.0.0.0 --port \"$DKT_PORT\""]

# The inference runtime: Python deps with the CPU torch wheel, no code and no model.
# Built once per requirements change (tag = hash of its context), so that a model update
# never re-sends the ~190 MB wheel or re-runs pip. Context (assembled by pipeline.swarm):
#   build-ca.crt, requirements.txt, wheels/*.whl
ARG BASE_IMAGE=local/python:3.11-bookworm
FROM ${BASE_IMAGE}

# Index settings are build arguments, not ENV, so they do not stay in the image.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ENV PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/opt/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The builder's CA bundle: an egress proxy that re-signs TLS must be trusted by pip.
COPY build-ca.crt /etc/ssl/certs/dkt-build-ca.crt
COPY requirements.txt /tmp/requirements.txt
COPY wheels/ /tmp/wheels/
# The local CPU wheel satisfies torch==X first, so pip never fetches a multi-GB CUDA build.
# The bytecode pip compiles stays in the image: every replica imports torch and bentoml in two processes, and
# compiling them again at each start made a replica's import 16-31 s instead of 10-11 s on a busy 2-core host.
RUN python3 -m venv /opt/venv \
 && PIP_CERT=/etc/ssl/certs/dkt-build-ca.crt pip install --no-cache-dir --find-links /tmp/wheels \
      -r /tmp/requirements.txt \
 && rm -rf /tmp/wheels /tmp/requirements.txt \
 && useradd --system --create-home --home-dir /home/dkt dkt \
 && mkdir -p /opt/bentoml && chown dkt /opt/bentoml

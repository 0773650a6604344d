# The inference runtime: the Python distributions the service needs, no code and no model.
# Built once per change of them (tag = hash of the context and the distributions' RECORDs), so that a model
# update never re-sends them. Context (assembled by pipeline/swarm_images.py):
#   venv.tar: the files pip installed in the app venv for requirements.txt's runtime pins (the CPU torch wheel's
#   torch included), bytecode included, scripts pointed at /opt/venv/bin/python; requirements.txt: those pins.
# No pip runs here: the image holds the very files the host tests and serves with (docs/docker.md, Images).
ARG BASE_IMAGE=local/python:3.11-bookworm
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/opt/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    PYTHONDONTWRITEBYTECODE=1

# dkt-venv-finish checks the files are for this python and makes /opt/venv a venv around them.
ADD venv.tar /opt/venv/
COPY requirements.txt /opt/venv/requirements.txt
COPY venv-finish.sh /usr/local/bin/dkt-venv-finish
RUN dkt-venv-finish \
 && useradd --system --create-home --home-dir /home/dkt dkt \
 && mkdir -p /opt/bentoml && chown dkt /opt/bentoml

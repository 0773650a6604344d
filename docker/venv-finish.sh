#!/bin/sh
# Run in the image right after `COPY venv/ /opt/venv/` (the app venv's installed files, pipeline/swarm_images.py):
# they are for the app venv's python minor version (lib/pythonX.Y), which must be this image's; `venv` then adds
# what a venv needs around them (pyvenv.cfg, bin/python). The bytecode pip compiled stays valid (COPY keeps the
# files' times): a replica imports torch and bentoml in two processes, 10-11 s each with it, 16-31 s without
# (compiled again at every start), measured on a busy 2-core host.
set -eu
py="$(python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])')"
if ! ls -d /opt/venv/lib/"$py"/site-packages/*.dist-info >/dev/null 2>&1; then
  echo "error: the app venv's distributions are not for this image's $py: /opt/venv/lib holds $(ls /opt/venv/lib)" >&2
  exit 1
fi
python3 -m venv --without-pip /opt/venv

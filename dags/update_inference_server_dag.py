"""update_inference_server_dag: a newly promoted model -> the inference service, with no failed request.

pack: pull-model (production), then pack (dkt pack) -> deploy: deploy, then verify (/metadata reports the new
version, else the previous server is restored). $DKT_DEPLOY_MODE: local (default; blue/green bentoml serve and
a client URL switch) or swarm (rolling update). Scheduled on the model asset. Local mode with
$DKT_DEPLOY_STRATEGY=swap (default): one task, deploy, runs the four steps; the new model is swapped into the
running server (pack skips packer.py), so there is no second task to start (docs/pipeline.md#the-cycle).

The store names what is served: when pack, deploy or verify fails, the step puts the production
pointer back on the version the live ``/metadata`` reports (unless production was promoted again
meanwhile) and says so in its log; a verified deploy records ``state/serving.json``, which
``dkt models list`` uses to mark the version serving now.

Param ``replicas`` (swarm mode): also scale inference to that many replicas; trigger the DAG with
``{"replicas": 5}`` to scale (the same model redeploys as a no-op). Empty keeps the current count.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.sdk import Param

# Airflow 3 does not put the DAG folder on sys.path; the shared helper sits beside this file.
if (_here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, _here)
from dkt_tasks import MODEL_ASSET, cli, pipeline_dag

from dkt.settings import PipelineSettings, load

_SETTINGS = load(PipelineSettings)  # dkt_tasks put the repository on sys.path
SWAP = _SETTINGS.deploy_mode == "local" and _SETTINGS.deploy_strategy == "swap"

with pipeline_dag(
    "update_inference_server_dag",
    [MODEL_ASSET],
    __doc__,
    ["serving"],
    params={
        "replicas": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=32,
            description="Swarm mode: inference replicas after the deploy; empty keeps the current count.",
        )
    },
):
    # Two tasks, not four (each task start costs seconds: docs/pipeline.md#the-cycle-new-answers---served): the pull
    # goes with the pack, the check with the switch (verify switches back itself when it fails); a retry of deploy
    # does not pack again.
    # Swap: one task (pull, a pack that skips packer.py when a server runs, the swap, the check): a task start
    # costs 10-14 s at load; the pack's own seconds, which a retry would repeat, are gone.
    pull_pack = ["-m dkt deploy pull-model", "-m dkt deploy pack"]
    deploy_verify = [
        "-m dkt deploy deploy{% if params.replicas %} --replicas {{ params.replicas | int }}{% endif %}",
        "-m dkt deploy verify",
    ]
    if SWAP:
        cli("deploy", [*pull_pack, *deploy_verify], timeout_minutes=60)
    else:
        pack = cli("pack", pull_pack, timeout_minutes=35)
        deploy = cli("deploy", deploy_verify, timeout_minutes=25)
        pack >> deploy

"""update_inference_server_dag: a newly promoted model -> the inference service, with no failed request.

pack: pull-model (production), then pack (dkt pack) -> deploy: deploy, then verify (/metadata reports the new
version, else the previous server is restored). $DKT_DEPLOY_MODE: local (default; blue/green bentoml serve and
a client URL switch) or swarm (rolling update). Scheduled on the model asset.

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
    pack = cli("pack", ["-m dkt deploy pull-model", "-m dkt deploy pack"], timeout_minutes=35)
    deploy = cli(
        "deploy",
        [
            "-m dkt deploy deploy{% if params.replicas %} --replicas {{ params.replicas | int }}{% endif %}",
            "-m dkt deploy verify",
        ],
        timeout_minutes=25,
    )
    pack >> deploy

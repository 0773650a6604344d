"""update_inference_server_dag: a newly promoted model -> the inference service, with no failed request.

pull_model (production) -> pack (packer.py) -> deploy -> verify (/metadata reports the new version,
else the previous server is restored). $DKT_DEPLOY_MODE: local (default; blue/green bentoml serve and
a client URL switch) or swarm (rolling update). Scheduled on the model asset.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

# Airflow 3 does not put the DAG folder on sys.path; the shared helper sits beside this file.
if (_here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, _here)
from dkt_tasks import DEFAULT_ARGS, MODEL_ASSET, cli

with DAG(
    dag_id="update_inference_server_dag",
    schedule=[MODEL_ASSET],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["dkt", "serving"],
    doc_md=__doc__,
):
    pull = cli("pull_model", "-m pipeline.deploy pull-model", timeout_minutes=15)
    pack = cli("pack", "-m pipeline.deploy pack", timeout_minutes=20)
    deploy = cli("deploy", "-m pipeline.deploy deploy", timeout_minutes=15)
    verify = cli("verify", "-m pipeline.deploy verify", timeout_minutes=10)
    pull >> pack >> deploy >> verify

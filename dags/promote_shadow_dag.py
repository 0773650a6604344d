"""promote_shadow_dag: promote the shadow model once live answers show it is not worse than production.

promote_shadow (``dkt models promote-shadow``): reads the client's prediction log ($DKT_CLIENT_DB, on the host
that runs the task), takes the answers that production and the shadow (store pointer models/shadow) both
scored, and, once there are $DKT_SHADOW_MIN_ANSWERS of them, compares their AUCs with a paired bootstrap
interval (docs/pipeline.md#promotion-gates). Promoted: production names the shadow's version, the shadow is
cleared, the figures go into the promotion history and the task emits the model asset, so
update_inference_server_dag deploys it. Not enough answers, answers that do not decide yet, a shadow shown
worse (recorded), or no shadow: the task is skipped and its log says why, with the figures.
Scheduled by $DKT_PROMOTE_SHADOW_SCHEDULE (default @hourly).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Airflow 3 does not put the DAG folder on sys.path; the shared helper sits beside this file.
if (_here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, _here)
from dkt_tasks import MODEL_ASSET, SETTINGS, cli, pipeline_dag

with pipeline_dag("promote_shadow_dag", SETTINGS.promote_shadow_schedule, __doc__, ["model", "shadow"]):
    cli("promote_shadow", "-m dkt models promote-shadow", timeout_minutes=10, outlets=[MODEL_ASSET])

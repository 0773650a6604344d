"""The retraining loop: versioned storage, data updates, model promotion and deployment.

The DAGs in ``dags/`` are thin; the logic lives here, behind the CLIs
``python -m data`` and ``python -m models`` and ``python -m pipeline.*``.
"""

"""The retraining loop: versioned storage, data updates, model promotion and deployment.

The DAGs in ``dags/`` are thin; the logic lives here, behind the ``dkt`` commands
(``dkt data``, ``dkt models``, ``dkt deploy``, ``dkt stack``, ``dkt swarm``; dkt/cli.py lists them).
"""

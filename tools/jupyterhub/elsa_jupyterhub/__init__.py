"""Elsa for JupyterHub: each user's server is an elsad session (checkpointed on stop, restored on
start, live-migrated between hosts), and elsa-hub-service, the operator's API and admin page."""

from .spawner import ElsaSpawner  # noqa: F401

__all__ = ["ElsaSpawner"]

"""Test harness: a throwaway PostgreSQL cluster and the real server in a subprocess.

See ``tests/conftest.py`` for the pytest fixtures built on these.
"""

from .postgres import PostgresCluster, PostgresUnavailable, free_port, find_pg_bin
from .server import ServerProcess, ServerStartError, base_env, run_cli

__all__ = [
    "PostgresCluster",
    "PostgresUnavailable",
    "ServerProcess",
    "ServerStartError",
    "base_env",
    "find_pg_bin",
    "free_port",
    "run_cli",
]

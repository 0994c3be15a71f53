"""The repository actor assembled from configuration: settings, index, store, registry."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from sqlalchemy import Engine

from registry.affinity import AffinityDomain

from .config import RepositorySettings, repository_settings
from .gateway import InProcessRegistry, RegistryGateway, RemoteRegistry
from .storage import DocumentStore, open_store


@dataclass
class Repository:
    """What the repository's transactions need."""

    settings: RepositorySettings
    engine: Engine
    store: DocumentStore
    registry: RegistryGateway


def open_repository(env: Mapping[str, str], home: Path, engine: Engine,
                    domain: AffinityDomain) -> Repository:
    settings = repository_settings(env, home)
    registry: RegistryGateway = (RemoteRegistry(settings.registry_url, engine)
                                 if settings.registry_url else InProcessRegistry(engine, domain))
    return Repository(settings, engine, open_store(env, home), registry)

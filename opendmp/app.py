"""WSGI assembly: every actor's endpoint on one SoapApplication (gunicorn loads this)."""
from __future__ import annotations

import logging

from sqlalchemy import text

from atna.service import wsgi_parts as atna_wsgi_parts
from cda.web import routes as cda_routes
from pix.service import pix_v3_endpoint
from registry.affinity import AffinityDomain
from registry.service import registry_endpoint
from repository.actor import open_repository
from repository.service import repository_endpoint
from soapstack.wsgi import SoapApplication
from xua.config import xua_step

from .config import ROOT, Settings
from .db import make_engine
from .policy import HttpReaders


def create_app(settings: Settings | None = None) -> SoapApplication:
    """Build the WSGI application from the environment (``OPENDMP_*``)."""
    settings = settings or Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    engine = make_engine(settings.database_url)
    domain = AffinityDomain.from_settings(settings.env)
    repository = open_repository(settings.env, settings.home, engine, domain)

    def health() -> dict:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "database": engine.dialect.name}

    # ATNA (atna.service): every transaction audited; GET /audit and /fhir/AuditEvent.
    endpoints, audit_routes, read_audit = atna_wsgi_parts(
        settings, engine, [registry_endpoint(engine, domain),
                           repository_endpoint(repository, domain.home_community_id),
                           pix_v3_endpoint(engine, settings.env)], repository)
    return SoapApplication(
        endpoints=endpoints,
        schema_dir=ROOT / "schemas" / "ihe-iti" / "schema",
        max_body=settings.max_request_bytes,
        max_mtom_body=settings.max_mtom_request_bytes,
        health=health,
        extra_routes={**cda_routes(engine, repository, HttpReaders.from_env(settings.env),
                                   read_audit),  # health-data reads audited
                      **audit_routes},
        # XUA (xua/, soapstack/wssecurity.py): OPENDMP_XUA=required|optional|off
        security=xua_step(settings.env, settings.home),
    )

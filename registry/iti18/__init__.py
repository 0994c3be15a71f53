"""ITI-18 Registry Stored Query, Document Registry side (ITI TF-2a §3.18).

:func:`registry_stored_query` takes the parsed ``query:AdhocQueryRequest`` and returns
the serialized ``query:AdhocQueryResponse``. Request errors never raise: they come back
as a Failure response with the RegistryErrorList (ITI TF-2a §3.18.4.1.3, ITI TF-3
Table 4.2.4.1-2). Layers: :mod:`.params` reads the request and binds the parameters,
:mod:`.queries` holds the 14 stored queries as SQL, :mod:`.response` writes the bytes.
"""
from __future__ import annotations

import sqlalchemy
from lxml import etree

from opendmp import policy
from registry import errors as E
from registry.affinity import AffinityDomain

from . import response
from .params import HOME_COMMUNITY_ID, LEAF_CLASS, bind, read_request
from .queries import QUERIES, STORED_QUERIES, StoredQuery, TooManyResults, run

__all__ = ["QUERIES", "STORED_QUERIES", "StoredQuery", "registry_stored_query"]


def registry_stored_query(conn: sqlalchemy.Connection, request: etree._Element,
                          domain: AffinityDomain, identity=None) -> bytes:
    """query:AdhocQueryRequest element -> serialized query:AdhocQueryResponse (UTF-8, no
    XML declaration, xmlns declarations for query/rim/rs). Never raises for request
    errors: returns a Failure response with the RegistryErrorList. Database errors
    propagate; what the ``identity`` (the XUA context) may not see is refused by
    :func:`opendmp.policy.require_registry_objects` (a SecurityFault)."""
    try:
        adhoc = read_request(request)
        query = STORED_QUERIES.get(adhoc.query_id.lower())
        if query is None:
            raise E.XdsError(E.UNKNOWN_STORED_QUERY,
                             f"stored query {adhoc.query_id} is not known to this registry")
        _check_community(adhoc.home, "AdhocQuery/@home", domain)
        params = bind(query.params, adhoc.slots, query.one_of)
        if query.accepts(HOME_COMMUNITY_ID):
            _check_community(params.single(HOME_COMMUNITY_ID), HOME_COMMUNITY_ID, domain)
        leaf = adhoc.return_type == LEAF_CLASS
        rows = run(conn, query, params, leaf=leaf, limit=domain.max_query_results)
    except E.XdsError as exc:
        return response.failure([exc])
    except E.XdsErrors as exc:
        return response.failure(exc.errors)
    except TooManyResults:
        return response.failure([E.XdsError(
            E.TOO_MANY_RESULTS,
            f"{query.name} would return more than {domain.max_query_results} objects; "
            "narrow the query")])
    policy.require_registry_objects(identity, conn, rows)
    home = domain.home_community_id
    if leaf:
        return response.leaf_class([r.ebrim for r in rows], home, params.warnings)
    return response.object_refs([r.uuid for r in rows], home, params.warnings)


def _check_community(value: str | None, where: str, domain: AffinityDomain) -> None:
    """A query addressed to another community is XDSUnknownCommunity (ITI TF-2a
    §3.18.4.1.3). Without a configured homeCommunityId the registry has no community
    and accepts any value."""
    home = domain.home_community_id
    if value is None or home is None:
        return
    if _normalize_community(value) != _normalize_community(home):
        raise E.XdsError(E.UNKNOWN_COMMUNITY,
                         f"{where} {value} is not this registry's community ({home})")


def _normalize_community(value: str) -> str:
    value = value.strip()
    return "urn:oid:" + value[8:] if value[:8].lower() == "urn:oid:" else value

"""The Patient Identifier Cross-reference Manager, transport-free.

Operations on a SQLAlchemy ``Connection`` inside the caller's write transaction
(``opendmp.db.write_transaction``); the HL7 v2 binding (:mod:`pix.hl7v2`) and, later,
the HL7 v3 binding (ITI-44/45/46) parse their messages into :mod:`pix.model` requests,
call these functions and turn the result or the :class:`~pix.model.PixError` into
their acknowledgement.

Linking policy (ITI TF-2a §3.8.4.1.3 leaves it to the PIX Manager):

* identifiers sent together in one feed (PID-3 repetitions) are one patient;
* the INS links: a local identifier fed with an INS joins the INS's group;
* a group holds at most one active identifier per domain — two INS of one domain, or
  two local identifiers of one domain, are a conflict, refused (an A40 merge is the way
  to say two identifiers of one domain are one patient);
* traits fed with a group that has an INS are checked against the INS's traits (and the
  INS's own encoding of sex and birth year/month): a contradiction is refused, never
  silently linked;
* optional (``OPENDMP_PIX_LINK_ON_TRAITS=1``): identifiers without INS are linked across
  domains on equal name, first name, full birth date and sex.

The XDS registry follows: an identifier of the affinity domain (``OPENDMP_PATIENT_DOMAINS``)
is inserted into the registry's ``patient`` table when it is first fed — that is what
lets the registry accept documents for it — and a merge of such identifiers sets
``patient.merged_into`` and re-points the registry's objects to the survivor.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, insert, select, tuple_, update

from opendmp.schema import pix_identifier as T
from opendmp.schema import patient as P
from opendmp.schema import pix_xref
from registry import store as registry_store

from .config import PixConfig
from .ins import INS_OIDS, InsError, parse_matricule
from .model import (
    Domain,
    ErrorKind,
    Feed,
    Identifier,
    Merge,
    PixError,
    Query,
    QueryResult,
    Traits,
)

__all__ = ["PixManager", "FeedResult", "Notifier"]

#: called with the connection and the active identifiers of a group whose membership
#: changed (ITI-10 / ITI-46 enqueue their notification in the same transaction).
Notifier = Callable[[Connection, Sequence[Identifier]], None]

_COLS = (T.c.pk, T.c.domain, T.c.id_value, T.c.type_code, T.c.xref_pk, T.c.merged_into,
         T.c.is_ins, T.c.traits)


# Hot statements, built once (SQLAlchemy caches their compiled form): ITI-8 and ITI-9
# cost a few round trips each, and building Core statements per call was half the CPU.
_SEL_ROWS = select(*_COLS).where(
    tuple_(T.c.domain, T.c.id_value).in_(bindparam("keys", expanding=True)))
_SEL_ROW = select(*_COLS).where(T.c.domain == bindparam("d"), T.c.id_value == bindparam("v"))
_SEL_MEMBERS = select(*_COLS).where(T.c.xref_pk.in_(bindparam("xrefs", expanding=True)),
                                    T.c.merged_into.is_(None)).order_by(T.c.pk)
_INS_XREF = insert(pix_xref).values(updated_at=bindparam("now")).returning(pix_xref.c.pk)
_INS_IDENT = insert(T)
_QK = T.alias("q")
#: ITI-9 in one round trip: the queried row (merged or not) and its group's active members
_Q_GROUP = (select(_QK.c.pk.label("qpk"), _QK.c.merged_into.label("qmerged"),
                   T.c.pk, T.c.domain, T.c.id_value, T.c.type_code)
            .select_from(_QK.outerjoin(T, (T.c.xref_pk == _QK.c.xref_pk)
                                       & T.c.merged_into.is_(None)))
            .where(_QK.c.domain == bindparam("d"), _QK.c.id_value == bindparam("v"))
            .order_by(T.c.pk))


def _insert_patient_if_absent(conn: Connection):
    """INSERT ... ON CONFLICT DO NOTHING into the registry's patient table (the one
    dialect-specific statement here; both PostgreSQL and SQLite have it)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(P).values(cx=bindparam("cx")).on_conflict_do_nothing(
        index_elements=[P.c.cx])


_UPSERT_PATIENT: dict[str, object] = {}


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class FeedResult:
    xref_pk: int
    created: tuple[Identifier, ...]
    linked: bool  # the group's membership changed


class PixManager:
    def __init__(self, config: PixConfig, notify: Notifier | None = None) -> None:
        self.config = config
        self.notify = notify

    # ------------------------------------------------------------------ identifiers

    def resolve_domain(self, namespace: str | None, universal_id: str | None,
                       universal_id_type: str | None = None,
                       location: tuple[str, int, int, int] = ("", 0, 0, 0)) -> Domain:
        """The configured domain an HD (CX.4) names; :class:`PixError` when none."""
        ns, uid = namespace or None, universal_id or None
        cfg = self.config
        if uid:
            d = cfg.by_uid(uid)
            if d is None:
                raise PixError(ErrorKind.UNKNOWN_DOMAIN,
                               f"assigning authority {ns or ''}&{uid} is not a domain of "
                               f"this PIX Manager", location)
            if ns and d.namespace and ns != d.namespace:
                raise PixError(ErrorKind.UNKNOWN_DOMAIN,
                               f"assigning authority {ns}&{uid}: namespace {ns!r} does not "
                               f"match the domain's {d.namespace!r}", location)
            return d
        if ns:
            d = cfg.by_namespace(ns) or cfg.by_uid(ns)
            if d is None:
                raise PixError(ErrorKind.UNKNOWN_DOMAIN,
                               f"assigning authority {ns!r} is not a domain of this PIX "
                               f"Manager", location)
            return d
        raise PixError(ErrorKind.UNKNOWN_DOMAIN,
                       "identifier without assigning authority (CX.4)", location)

    def identifier(self, id_value: str, namespace: str | None, universal_id: str | None,
                   universal_id_type: str | None = None, type_code: str | None = None,
                   location: tuple[str, int, int, int] = ("", 0, 0, 0)) -> Identifier:
        """Resolve and check one identifier: known domain, non-empty id, and for the
        INS domains a well-formed matricule with the right key."""
        if not id_value or not id_value.strip():
            raise PixError(ErrorKind.REQUIRED_MISSING, "empty identifier (CX.1)",
                           location[:3] + (1,))
        if len(id_value) > 128:
            raise PixError(ErrorKind.BAD_VALUE, "identifier longer than 128 characters",
                           location[:3] + (1,))
        domain = self.resolve_domain(namespace, universal_id, universal_id_type,
                                     location[:3] + (4,))
        if domain.universal_id in INS_OIDS:
            try:
                parse_matricule(id_value, domain.universal_id)
            except InsError as exc:
                raise PixError(ErrorKind.INVALID_INS, str(exc), location[:3] + (1,)) from None
        return Identifier(id_value, domain.key, type_code or None)

    def domain(self, key: str) -> Domain:
        return self.config.by_key(key)

    def registry_cx(self, ident: Identifier) -> str | None:
        """The registry's canonical CX for an identifier of the affinity domain, else None."""
        if ident.domain in self.config.affinity_oids:
            return f"{ident.id}^^^&{ident.domain}&ISO"
        return None

    # ------------------------------------------------------------------ reads

    def _row(self, conn: Connection, ident: Identifier):
        return conn.execute(_SEL_ROW, {"d": ident.domain, "v": ident.id}).first()

    def _rows(self, conn: Connection, idents: Sequence[Identifier]) -> dict:
        found = {(r.domain, r.id_value): r for r in conn.execute(
            _SEL_ROWS, {"keys": [(i.domain, i.id) for i in idents]})}
        return {(i.domain, i.id): found.get((i.domain, i.id)) for i in idents}

    def _members(self, conn: Connection, xref_pks: Sequence[int]):
        if not xref_pks:
            return []
        return conn.execute(_SEL_MEMBERS, {"xrefs": list(xref_pks)}).all()

    def _registry_add(self, conn: Connection, cx: str) -> None:
        """registry.store.add_patient with prebuilt statements (hot path of ITI-8)."""
        stmt = _UPSERT_PATIENT.get(conn.dialect.name)
        if stmt is None:
            stmt = _UPSERT_PATIENT[conn.dialect.name] = _insert_patient_if_absent(conn)
        conn.execute(stmt, {"cx": cx})

    def _lock_groups(self, conn: Connection, xref_pks: set[int]) -> None:
        if xref_pks and conn.dialect.name == "postgresql":
            conn.execute(select(pix_xref.c.pk).where(pix_xref.c.pk.in_(sorted(xref_pks)))
                         .order_by(pix_xref.c.pk).with_for_update())

    # ------------------------------------------------------------------ checks

    def _check_sources(self, idents: Sequence[Identifier], source: str,
                       locations: Sequence[tuple]) -> None:
        for ident, loc in zip(idents, locations):
            d = self.config.by_key(ident.domain)
            if d is not None and not d.allows(source):
                raise PixError(ErrorKind.NOT_AUTHORIZED,
                               f"source {source!r} may not assign identifiers in domain "
                               f"{d.namespace or d.universal_id}", tuple(loc[:3]) + (4,))

    @staticmethod
    def _check_ins_encoding(ident: Identifier, traits: Traits, loc) -> None:
        """The NIR/NIA encodes sex and year/month of birth: they must agree with the traits."""
        if ident.domain not in INS_OIDS:
            return
        m = parse_matricule(ident.id)
        bad = []
        if m.sex and traits.sex in ("M", "F") and m.sex != traits.sex:
            bad.append(f"sex {traits.sex} (INS says {m.sex})")
        bd = traits.birth_date or ""
        if len(bd) >= 4 and bd[2:4] != m.birth_year_2:
            bad.append(f"birth year {bd[:4]} (INS says ..{m.birth_year_2})")
        if len(bd) >= 6 and m.birth_month is not None and int(bd[4:6]) != m.birth_month:
            bad.append(f"birth month {bd[4:6]} (INS says {m.birth_month:02d})")
        if bad:
            raise PixError(ErrorKind.TRAIT_CONTRADICTION,
                           f"INS {ident.id}: traits contradict the matricule: " + ", ".join(bad),
                           tuple(loc[:3]) + (1,))

    @staticmethod
    def _check_one_per_domain(members: Sequence[tuple[str, str]], what: str) -> None:
        seen: dict[str, str] = {}
        for domain, value in members:
            if domain in seen and seen[domain] != value:
                kind = "INS" if domain in INS_OIDS else "identifiers"
                raise PixError(ErrorKind.CONFLICT,
                               f"{what} would link two {kind} of domain {domain} "
                               f"({seen[domain]} and {value}) to one patient; refused "
                               f"(send a merge if they are the same patient)")
            seen[domain] = value

    @staticmethod
    def _check_traits_against_ins(traits: Traits, members) -> None:
        for row in members:
            if row.is_ins and row.traits:
                ref = Traits.from_dict(json.loads(row.traits))
                diff = traits.contradictions(ref)
                if diff:
                    raise PixError(ErrorKind.TRAIT_CONTRADICTION,
                                   f"traits contradict those of INS {row.id_value}: "
                                   + ", ".join(diff) + "; refused, not linked")

    # ------------------------------------------------------------------ feed

    def feed(self, conn: Connection, feed: Feed,
             locations: Sequence[tuple] | None = None) -> FeedResult:
        """ITI-8 A01/A04/A05/A08 (ITI-44 add/revise). Refusals raise :class:`PixError`
        before anything is written."""
        idents = list(feed.identifiers)
        locations = list(locations or [("PID", 3, i + 1, 0) for i in range(len(idents))])
        if not idents:
            raise PixError(ErrorKind.REQUIRED_MISSING, "no patient identifier", ("PID", 3, 0, 0))
        # one identifier per domain in the message itself
        self._check_one_per_domain([(i.domain, i.id) for i in idents], "this feed")
        uniq: dict[tuple[str, str], tuple[Identifier, tuple]] = {}
        for i, loc in zip(idents, locations):
            uniq.setdefault((i.domain, i.id), (i, loc))
        idents = [v[0] for v in uniq.values()]
        locations = [v[1] for v in uniq.values()]
        for i, loc in zip(idents, locations):
            self._check_ins_encoding(i, feed.traits, loc)

        rows = self._rows(conn, idents)
        for i, loc in zip(idents, locations):
            row = rows[(i.domain, i.id)]
            if row is not None and row.merged_into is not None:
                raise PixError(ErrorKind.CONFLICT,
                               f"identifier {i.id} was merged into another one; feed the "
                               f"surviving identifier", tuple(loc[:3]) + (1,))
        # only the domain's sources may assign (create) identifiers in it; anyone may
        # cite an existing one to link to it (OpenHIE CR-04 vs CR-06)
        new = [(i, loc) for i, loc in zip(idents, locations) if rows[(i.domain, i.id)] is None]
        self._check_sources([i for i, _ in new], feed.source, [loc for _, loc in new])
        groups = {r.xref_pk for r in rows.values() if r is not None}
        has_ins = any(i.domain in INS_OIDS for i in idents)

        match_key = feed.traits.match_key() if self.config.link_on_traits else None
        self._lock_groups(conn, groups)
        members = self._members(conn, sorted(groups))
        if match_key and not has_ins and not any(m.is_ins for m in members):
            members = self._link_on_traits(conn, match_key, idents, groups, members)

        self._check_traits_against_ins(feed.traits, members)
        all_ids = [(m.domain, m.id_value) for m in members] + [(i.domain, i.id) for i in idents]
        self._check_one_per_domain(all_ids, "this feed")

        now = _now_ms()
        if groups:
            target = min(groups)
            others = sorted(groups - {target})
            if others:
                conn.execute(update(T).where(T.c.xref_pk.in_(others)).values(xref_pk=target))
                conn.execute(delete(pix_xref).where(pix_xref.c.pk.in_(others)))
            conn.execute(update(pix_xref).where(pix_xref.c.pk == target).values(updated_at=now))
        else:
            target = conn.execute(_INS_XREF, {"now": now}).scalar_one()
        traits_json = json.dumps(feed.traits.as_dict(), ensure_ascii=False)[:2048] \
            if feed.traits.as_dict() else None
        mk = feed.traits.match_key()
        created, new_rows = [], []
        for i in idents:
            row = rows[(i.domain, i.id)]
            is_ins = 1 if i.domain in INS_OIDS else 0
            values = dict(type_code=i.type_code, xref_pk=target, source=feed.source[:256],
                          updated_at=now, match_key=None if is_ins else mk)
            if row is None:
                new_rows.append(dict(domain=i.domain, id_value=i.id, is_ins=is_ins,
                                     traits=traits_json, **values))
                created.append(i)
            else:
                if traits_json is not None:
                    values["traits"] = traits_json
                conn.execute(update(T).where(T.c.pk == row.pk).values(**values))
        if new_rows:
            conn.execute(_INS_IDENT, new_rows)
            for i in created:
                cx = self.registry_cx(i)
                if cx is not None:
                    self._registry_add(conn, cx)
        linked = bool(created) or len(groups) > 1
        if linked and self.notify is not None and getattr(self.notify, "active", True):
            self.notify(conn, self.group_identifiers(conn, target))
        return FeedResult(target, tuple(created), linked)

    def _link_on_traits(self, conn, match_key, idents, groups, members):
        cands = conn.execute(select(T.c.xref_pk).where(T.c.match_key == match_key,
                                                       T.c.merged_into.is_(None))
                             .distinct().limit(20)).scalars().all()
        current = [(m.domain, m.id_value) for m in members] + [(i.domain, i.id) for i in idents]
        for xref in sorted(set(cands) - groups):
            cand_members = self._members(conn, [xref])
            if any(m.is_ins for m in cand_members):
                continue  # never link to an INS on traits alone
            trial = current + [(m.domain, m.id_value) for m in cand_members]
            try:
                self._check_one_per_domain(trial, "trait linking")
            except PixError:
                continue
            groups.add(xref)
            current = trial
        return self._members(conn, sorted(groups))

    def group_identifiers(self, conn: Connection, xref_pk: int) -> list[Identifier]:
        return [Identifier(r.id_value, r.domain, r.type_code)
                for r in self._members(conn, [xref_pk])]

    # ------------------------------------------------------------------ merge

    def merge(self, conn: Connection, m: Merge,
              survivor_loc: tuple = ("PID", 3, 1, 0),
              subsumed_loc: tuple = ("MRG", 1, 1, 0)) -> FeedResult:
        """ITI-8 A40 (ITI-44 merge): ``m.subsumed`` becomes inactive, its group's
        identifiers join the survivor's, and the registry follows (documents and queries
        of the subsumed affinity-domain identifier go to the survivor)."""
        sv, sb = m.survivor, m.subsumed
        cross_ins = sv.domain in INS_OIDS and sb.domain in INS_OIDS
        if sv.domain != sb.domain and not cross_ins:
            raise PixError(ErrorKind.CONFLICT,
                           f"merge across domains ({sb.domain} into {sv.domain}) is not "
                           f"allowed (ITI TF-2a §3.8: MRG-1 and PID-3 are of one domain)",
                           tuple(subsumed_loc[:3]) + (4,))
        if (sv.domain, sv.id) == (sb.domain, sb.id):
            raise PixError(ErrorKind.BAD_VALUE, "MRG-1 and PID-3 are the same identifier",
                           tuple(subsumed_loc[:3]) + (1,))
        self._check_sources([sv, sb], m.source, [survivor_loc, subsumed_loc])
        self._check_ins_encoding(sv, m.traits, survivor_loc)
        sb_row = self._row(conn, sb)
        if sb_row is None or sb_row.merged_into is not None:
            raise PixError(ErrorKind.UNKNOWN_IDENTIFIER,
                           f"identifier to merge {sb.id} is unknown"
                           + (" (already merged)" if sb_row is not None else ""),
                           tuple(subsumed_loc[:3]) + (1,))
        sv_row = self._row(conn, sv)
        if sv_row is not None and sv_row.merged_into is not None:
            raise PixError(ErrorKind.CONFLICT, f"surviving identifier {sv.id} was itself "
                           f"merged into another one", tuple(survivor_loc[:3]) + (1,))
        groups = {sb_row.xref_pk} | ({sv_row.xref_pk} if sv_row is not None else set())
        self._lock_groups(conn, groups)
        members = [r for r in self._members(conn, sorted(groups)) if r.pk != sb_row.pk]
        ids = [(r.domain, r.id_value) for r in members]
        if sv_row is None:
            ids.append((sv.domain, sv.id))
        self._check_one_per_domain(ids, "this merge")
        self._check_traits_against_ins(m.traits, members)

        now = _now_ms()
        target = sv_row.xref_pk if sv_row is not None else sb_row.xref_pk
        traits_json = json.dumps(m.traits.as_dict(), ensure_ascii=False)[:2048] \
            if m.traits.as_dict() else None
        if sv_row is None:
            sv_pk = conn.execute(insert(T).values(
                domain=sv.domain, id_value=sv.id, type_code=sv.type_code, xref_pk=target,
                is_ins=1 if sv.domain in INS_OIDS else 0, traits=traits_json,
                match_key=m.traits.match_key(), source=m.source[:256], updated_at=now,
            ).returning(T.c.pk)).scalar_one()
        else:
            sv_pk = sv_row.pk
            if traits_json is not None:
                conn.execute(update(T).where(T.c.pk == sv_pk).values(
                    traits=traits_json, updated_at=now, source=m.source[:256]))
        others = sorted(groups - {target})
        if others:
            conn.execute(update(T).where(T.c.xref_pk.in_(others)).values(xref_pk=target))
            conn.execute(delete(pix_xref).where(pix_xref.c.pk.in_(others)))
        conn.execute(update(T).where(T.c.merged_into == sb_row.pk).values(merged_into=sv_pk))
        conn.execute(update(T).where(T.c.pk == sb_row.pk).values(
            merged_into=sv_pk, xref_pk=target, match_key=None, updated_at=now))
        conn.execute(update(pix_xref).where(pix_xref.c.pk == target).values(updated_at=now))

        sv_cx, sb_cx = self.registry_cx(sv), self.registry_cx(sb)
        if sb_cx is not None and sv_cx is not None:
            registry_store.merge_patient(conn, sb_cx, sv_cx)
        elif sv_cx is not None:
            registry_store.add_patient(conn, sv_cx)
        if self.notify is not None and getattr(self.notify, "active", True):
            self.notify(conn, self.group_identifiers(conn, target))
        return FeedResult(target, () if sv_row is not None else (sv,), True)

    # ------------------------------------------------------------------ query

    def query(self, conn: Connection, q: Query) -> QueryResult:
        """ITI-9 (ITI-45). An unknown or merged-away identifier raises
        ``UNKNOWN_IDENTIFIER`` (ITI TF-2a §3.9.4.2.2.6 case 3: the subsumed identifier of a
        merge is no longer a valid key); otherwise the identifiers of the patient in the
        requested domains, or, with no domain requested, all the others."""
        members = conn.execute(_Q_GROUP, {"d": q.identifier.domain,
                                          "v": q.identifier.id}).all()
        if not members or members[0].qmerged is not None:
            raise PixError(ErrorKind.UNKNOWN_IDENTIFIER,
                           f"unknown patient identifier {q.identifier.id}", ("QPD", 3, 1, 1))
        qpk = members[0].qpk
        members = [r for r in members if r.pk is not None]
        if q.domains:
            wanted = set(q.domains)
            out = [r for r in members if r.domain in wanted]
        else:
            out = [r for r in members if r.pk != qpk]
        return QueryResult(tuple(Identifier(r.id_value, r.domain, r.type_code) for r in out))

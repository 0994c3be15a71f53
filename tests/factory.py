"""Builders of realistic DMP-flavoured XDS submissions for tests and benchmarks.

Codes come from the DMP value sets the registry enforces by default (JDV_J57 classCode,
JDV_J66 typeCode, JDV_J58 confidentiality, JDV_J02/J04, JDV_J60 formatCode); patient ids
are INS (NIR) in the production OID. Everything goes through the product's model and
ebRIM writer, so what is sent is what a DMP document source would send.
"""
from __future__ import annotations

import hashlib
import itertools
import random
import uuid

from registry import vocabulary as V
from registry.ebrim import submit_objects_request  # noqa: F401 (re-exported for tests)
from registry.model import (
    Association,
    Author,
    Code,
    DocumentEntry,
    Folder,
    LocalizedString,
    Slot,
    Submission,
    SubmissionSet,
)

INS_NIR = "1.2.250.1.213.1.4.8"
_counter = itertools.count(1)
_OID_ROOT = f"1.2.250.1.999.{random.randint(1, 10**6)}"


def ins_key(nir13: str) -> str:
    """The 2-digit key of a 13-character NIR (97 - n mod 97; Corsica 2A/2B per INSEE)."""
    digits = nir13.upper().replace("2A", "19").replace("2B", "18")
    return f"{97 - int(digits) % 97:02d}"


def new_ins(rng: random.Random | None = None) -> str:
    """A random, well-formed matricule INS (NIR + key) as an XDS patientId CX."""
    rng = rng or random.Random()
    nir = f"{rng.choice('12')}{rng.randint(0, 99):02d}{rng.randint(1, 12):02d}" \
          f"{rng.randint(1, 95):02d}{rng.randint(1, 999):03d}{rng.randint(1, 999):03d}"
    return f"{nir}{ins_key(nir)}^^^&{INS_NIR}&ISO^NH"


def new_oid() -> str:
    return f"{_OID_ROOT}.{next(_counter)}"


def code(c: str, scheme: str, display: str) -> Code:
    return Code(c, scheme, [LocalizedString(display)])


CR_BIO = dict(
    class_code=code("10", "1.2.250.1.213.1.1.4.1", "Compte rendu"),
    type_code=code("11502-2", "2.16.840.1.113883.6.1", "CR d'examens biologiques"),
    format_code=code("urn:ihe:lab:xd-lab:2008", "1.3.6.1.4.1.19376.1.2.3",
                     "CR d'examens de biologie médicale"),
)
VACCINATION = dict(
    class_code=code("10", "1.2.250.1.213.1.1.4.1", "Compte rendu"),
    type_code=code("87273-9", "2.16.840.1.113883.6.1", "Note de vaccination"),
    format_code=code("urn:asip:ci-sis:vac-note:2021", "1.2.250.1.213.1.1.4.2.282",
                     "Note de vaccination"),
)


def author() -> Author:
    return Author(
        person="801234567897^Martin^Claire^^^Dr^^^&1.2.250.1.71.4.2.1&ISO",
        institutions=["Laboratoire Central^^^^^^^^^1.2.250.1.71.4.2.2"],
        roles=["10^Médecin^1.2.250.1.71.1.2.7"],
        specialties=["SM26^Médecine générale^1.2.250.1.71.4.2.5"],
    )


def document_entry(patient: str, doc_id: str | None = None, content: bytes | None = None,
                   creation_time: str = "20241015103000", kind: dict = CR_BIO,
                   **overrides) -> DocumentEntry:
    content = content if content is not None else f"<doc>{uuid.uuid4()}</doc>".encode()
    de = DocumentEntry(
        id=doc_id or f"Document{next(_counter)}",
        object_type=V.STABLE_DOCUMENT,
        mime_type="text/xml",
        unique_id=new_oid(),
        patient_id=patient,
        source_patient_id=patient,
        source_patient_info=["PID-5|DUPONT^Jeanne^^^^^L", "PID-7|19750312", "PID-8|F"],
        title=[LocalizedString("Compte rendu de biologie")],
        confidentiality_codes=[code("N", "2.16.840.1.113883.5.25", "Normal")],
        healthcare_facility_type_code=code("SA01", "1.2.250.1.71.4.2.4",
                                           "Etablissement public de santé"),
        practice_setting_code=code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire"),
        authors=[author()],
        creation_time=creation_time,
        service_start_time=creation_time[:12],
        hash=hashlib.sha1(content).hexdigest(),
        size=str(len(content)),
        language_code="fr-FR",
        repository_unique_id="1.2.250.1.999.1.1",
        **kind,
    )
    for k, v in overrides.items():
        setattr(de, k, v)
    return de


def submission_set(patient: str, ss_id: str = "SubmissionSet01") -> SubmissionSet:
    return SubmissionSet(
        id=ss_id,
        unique_id=new_oid(),
        source_id="1.2.250.1.999.2",
        patient_id=patient,
        submission_time="20241015110000",
        content_type_code=code("04", "1.2.250.1.213.1.1.4.2.2", "Hospitalisation de jour"),
        authors=[author()],
    )


def member(ss_id: str, target: str, status: str = "Original") -> Association:
    return Association(id=f"Assoc{next(_counter)}", type=V.HAS_MEMBER, source=ss_id,
                       target=target, extra_slots=[Slot("SubmissionSetStatus", [status])])


def folder(patient: str, fol_id: str | None = None) -> Folder:
    return Folder(id=fol_id or f"Folder{next(_counter)}", unique_id=new_oid(), patient_id=patient,
                  title=[LocalizedString("Suivi")],
                  codes=[code("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")])


def submission(patient: str, n_docs: int = 1, with_folder: bool = False,
               replaces: str | None = None, relation: str = V.RPLC, **de_kw) -> Submission:
    """A submission set with ``n_docs`` documents, optionally in a new folder, optionally
    the first document replacing (or appending to, ...) the registered ``replaces``."""
    ss = submission_set(patient)
    sub = Submission(submission_sets=[ss])
    for _ in range(n_docs):
        de = document_entry(patient, **de_kw)
        sub.documents.append(de)
        sub.associations.append(member(ss.id, de.id))
    if with_folder:
        fol = folder(patient)
        sub.folders.append(fol)
        sub.associations.append(member(ss.id, fol.id, status=None))
        for de in sub.documents:
            link = Association(id=f"Assoc{next(_counter)}", type=V.HAS_MEMBER, source=fol.id,
                               target=de.id)
            sub.associations.append(link)
            sub.associations.append(member(ss.id, link.id, status=None))
    if replaces:
        sub.associations.append(Association(id=f"Assoc{next(_counter)}", type=relation,
                                            source=sub.documents[0].id, target=replaces))
    for a in sub.associations:
        if a.extra_slots and a.extra_slots[0].values == [None]:
            a.extra_slots = []
    return sub

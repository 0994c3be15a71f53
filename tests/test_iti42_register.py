"""ITI-42 Register Document Set-b on the real server (ITI TF-2b §3.42, ITI TF-3 §4.1-4.2)."""
from __future__ import annotations

import concurrent.futures as cf
import uuid
import factory as F
from lxml import etree
from xds import (
    APPROVED,
    DEPRECATED,
    ITI42,
    NS,
    error_codes,
    find_documents,
    find_folders,
    get_folder_and_contents,
    registry,
    status,
)

from registry import vocabulary as V
from registry.model import Association, Classification, ExternalIdentifier, LocalizedString, Slot


def _patient(cli) -> str:
    patient = F.new_ins()
    assert cli("patient", "add", patient).returncode == 0
    return patient


def _register(server, sub):
    return registry(server).call(ITI42, F.submit_objects_request(sub)).payload


def _entries(response) -> list[etree._Element]:
    return response.xpath("//rim:ExtrinsicObject", namespaces=NS)


def test_iti42_registers_and_leafclass_returns_everything_submitted(server, cli):
    patient = _patient(cli)
    sub = F.submission(patient)
    de = sub.documents[0]
    de.extra_slots.append(Slot("urn:example:extra", ["kept", "both values"]))
    de.comments = [LocalizedString("un commentaire", lang="fr-FR")]
    de.extra_classifications.append(Classification(
        id="urn:uuid:0b2d6c55-7f4c-4f4d-8d22-7a4a1e3b9f10", classified_object=de.id,
        scheme="urn:uuid:0b2d6c55-7f4c-4f4d-8d22-000000000001", node_representation="X1",
        slots=[Slot("codingScheme", ["1.2.3"])], name=[LocalizedString("extra code")]))
    de.extra_external_identifiers.append(ExternalIdentifier(
        id="urn:uuid:0b2d6c55-7f4c-4f4d-8d22-7a4a1e3b9f11", registry_object=de.id,
        scheme="urn:uuid:0b2d6c55-7f4c-4f4d-8d22-000000000002", value="EXT-1"))
    answer = _register(server, sub)
    assert status(answer) == "Success", etree.tostring(answer)

    found = _entries(find_documents(server, patient))
    assert len(found) == 1
    eo = found[0]
    assert eo.get("status") == APPROVED
    assert eo.get("id").startswith("urn:uuid:") and eo.get("lid") == eo.get("id")
    assert eo.find("rim:VersionInfo", NS).get("versionName") == "1"
    slot = eo.xpath("rim:Slot[@name='urn:example:extra']/rim:ValueList/rim:Value/text()",
                    namespaces=NS)
    assert slot == ["kept", "both values"]
    assert eo.xpath("rim:Description/rim:LocalizedString/@value", namespaces=NS) == \
        ["un commentaire"]
    assert eo.xpath("rim:Classification[@nodeRepresentation='X1']/rim:Name/rim:LocalizedString"
                    "/@value", namespaces=NS) == ["extra code"]
    assert eo.xpath("rim:ExternalIdentifier[@value='EXT-1']", namespaces=NS)
    assert eo.xpath(f"rim:ExternalIdentifier[@identificationScheme='{V.DE_UNIQUE_ID}']/@value",
                    namespaces=NS) == [de.unique_id]
    assert eo.xpath("rim:Slot[@name='hash']/rim:ValueList/rim:Value/text()",
                    namespaces=NS) == [de.hash]
    assert eo.xpath(f"rim:Classification[@classificationScheme='{V.DE_AUTHOR}']"
                    "/rim:Slot[@name='authorPerson']/rim:ValueList/rim:Value/text()",
                    namespaces=NS) == [de.authors[0].person]


def test_iti42_stores_any_unicode_and_xml_special_characters_exactly(server, cli):
    """Values travel to the database and back unchanged, whatever their characters
    (accents, astral plane, quotes, backslashes, XML specials), including the multi-valued
    query keys: an authorPerson with such characters is found by FindDocuments."""
    patient = _patient(cli)
    odd = "Éloïse \u20ac \U0001d11e \\x00 \\ \" ' <&> %s %(x)s"
    sub = F.submission(patient)
    de = sub.documents[0]
    de.title = [LocalizedString(odd)]
    de.authors[0].person = f"801234567897^{odd}^Claire^^^Dr^^^&1.2.250.1.71.4.2.1&ISO"
    de.extra_slots.append(Slot("urn:example:odd", [odd]))
    assert status(_register(server, sub)) == "Success"
    (eo,) = _entries(find_documents(server, patient, **{
        "$XDSDocumentEntryAuthorPerson": "('%^" + odd.replace("'", "''") + "^%')"}))
    assert eo.xpath("rim:Name/rim:LocalizedString/@value", namespaces=NS) == [odd]
    assert eo.xpath("rim:Slot[@name='urn:example:odd']/rim:ValueList/rim:Value/text()",
                    namespaces=NS) == [odd]
    assert eo.xpath(f"rim:Classification[@classificationScheme='{V.DE_AUTHOR}']"
                    "/rim:Slot[@name='authorPerson']/rim:ValueList/rim:Value/text()",
                    namespaces=NS) == [de.authors[0].person]


def test_iti42_rejects_unknown_patient_with_XDSUnknownPatientId(server):
    answer = _register(server, F.submission(F.new_ins()))
    assert status(answer) == "Failure"
    assert error_codes(answer) == ["XDSUnknownPatientId"]


def test_iti42_rejects_patient_outside_affinity_domain(server, cli):
    foreign = "123456^^^&1.2.3.4.5&ISO"
    answer = _register(server, F.submission(foreign))
    assert error_codes(answer) == ["XDSUnknownPatientId"]


def test_iti42_rejects_patient_id_mismatch_with_XDSPatientIdDoesNotMatch(server, cli):
    patient, other = _patient(cli), _patient(cli)
    sub = F.submission(patient, n_docs=2)
    sub.documents[1].patient_id = other
    answer = _register(server, sub)
    assert "XDSPatientIdDoesNotMatch" in error_codes(answer)
    assert not _entries(find_documents(server, patient))
    assert not _entries(find_documents(server, other))


def test_iti42_rejects_code_outside_dmp_value_set(server, cli):
    patient = _patient(cli)
    sub = F.submission(patient)
    sub.documents[0].class_code = F.code("99999", "1.2.250.1.213.1.1.4.1", "inconnu")
    answer = _register(server, sub)
    assert error_codes(answer) == ["XDSRegistryMetadataError"]
    reason = answer.xpath("//rs:RegistryError/@codeContext", namespaces=NS)[0]
    assert "classCode 99999" in reason and "value set" in reason


def test_iti42_missing_required_attributes_each_named(server, cli):
    patient = _patient(cli)
    sub = F.submission(patient)
    de = sub.documents[0]
    de.type_code = None
    de.language_code = None
    de.hash = None
    answer = _register(server, sub)
    reasons = " | ".join(answer.xpath("//rs:RegistryError/@codeContext", namespaces=NS))
    for name in ("typeCode", "languageCode", "hash"):
        assert f"{name} is required" in reasons


def test_iti42_failed_submission_leaves_nothing(server, cli):
    patient = _patient(cli)
    sub = F.submission(patient, n_docs=3, with_folder=True)
    sub.documents[2].creation_time = "2024-10-15"  # not a DTM
    answer = _register(server, sub)
    assert status(answer) == "Failure"
    assert not _entries(find_documents(server, patient))


def test_iti42_rplc_deprecates_original_and_replacing_it_again_fails(server, cli):
    patient = _patient(cli)
    assert status(_register(server, F.submission(patient))) == "Success"
    original = _entries(find_documents(server, patient))[0].get("id")
    assert status(_register(server, F.submission(patient, replaces=original))) == "Success"
    both = _entries(find_documents(server, patient, statuses=(APPROVED, DEPRECATED)))
    statuses = {eo.get("id"): eo.get("status") for eo in both}
    assert statuses[original] == DEPRECATED
    assert sorted(statuses.values()) == sorted([APPROVED, DEPRECATED])
    again = _register(server, F.submission(patient, replaces=original))
    assert error_codes(again) == ["XDSRegistryDeprecatedDocumentError"]


def test_iti42_association_to_missing_object_is_unresolved(server, cli):
    patient = _patient(cli)
    answer = _register(server, F.submission(
        patient, replaces="urn:uuid:00000000-0000-4000-8000-000000000000"))
    assert error_codes(answer) == ["UnresolvedReferenceException"]


def test_iti42_same_document_uniqueid_other_hash_is_XDSNonIdenticalHash(server, cli):
    patient = _patient(cli)
    first = F.submission(patient)
    assert status(_register(server, first)) == "Success"
    again = F.submission(patient)
    again.documents[0].unique_id = first.documents[0].unique_id
    answer = _register(server, again)
    assert error_codes(answer) == ["XDSNonIdenticalHash"]


def test_iti42_folder_uniqueid_reused_is_XDSDuplicateUniqueIdInRegistry(server, cli):
    patient = _patient(cli)
    first = F.submission(patient, with_folder=True)
    assert status(_register(server, first)) == "Success"
    second = F.submission(patient, with_folder=True)
    second.folders[0].unique_id = first.folders[0].unique_id
    assert error_codes(_register(server, second)) == ["XDSDuplicateUniqueIdInRegistry"]


def test_iti42_entryuuid_chosen_by_the_source_is_kept_and_cannot_be_registered_twice(
        server, cli):
    """UUID ids are the source's (only symbolic ids are replaced); an entryUUID already in
    the registry is refused even under new uniqueIds, and nothing of that submission is
    stored."""
    patient = _patient(cli)
    first = F.submission(patient)
    chosen = "urn:uuid:" + str(uuid.uuid4())
    first.associations[0].target = first.documents[0].id = chosen
    assert status(_register(server, first)) == "Success"
    assert [eo.get("id") for eo in _entries(find_documents(server, patient))] == [chosen]
    again = F.submission(patient)
    again.associations[0].target = again.documents[0].id = chosen
    answer = _register(server, again)
    assert error_codes(answer) == ["XDSRegistryMetadataError"]
    assert chosen in etree.tostring(answer).decode()
    assert len(_entries(find_documents(server, patient))) == 1


def test_iti42_concurrent_submissions_one_folder_uniqueid_exactly_one_wins(server, cli):
    patient = _patient(cli)
    subs = [F.submission(patient, with_folder=True) for _ in range(8)]
    for s in subs[1:]:
        s.folders[0].unique_id = subs[0].folders[0].unique_id
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda s: _register(server, s), subs))
    outcomes = sorted(status(a) for a in answers)
    assert outcomes == ["Failure"] * 7 + ["Success"]
    assert len(_entries(find_documents(server, patient))) == 1


def test_iti42_concurrent_replacements_of_one_document_exactly_one_wins(server, cli):
    patient = _patient(cli)
    assert status(_register(server, F.submission(patient))) == "Success"
    original = _entries(find_documents(server, patient))[0].get("id")
    with cf.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _register(server, F.submission(patient,
                                                                        replaces=original)),
                                range(6)))
    assert sorted(status(a) for a in answers) == ["Failure"] * 5 + ["Success"]
    assert len(_entries(find_documents(server, patient))) == 1


def test_iti42_document_added_to_existing_folder_updates_last_update_time(server, cli):
    patient = _patient(cli)
    assert status(_register(server, F.submission(patient, with_folder=True))) == "Success"
    (fol,) = find_folders(server, patient).xpath("//rim:RegistryPackage", namespaces=NS)
    before = fol.xpath("rim:Slot[@name='lastUpdateTime']/rim:ValueList/rim:Value/text()",
                       namespaces=NS)[0]
    later = F.submission(patient)
    link = Association(id="link1", type=V.HAS_MEMBER, source=fol.get("id"),
                       target=later.documents[0].id)
    later.associations += [link, F.member(later.submission_set.id, "link1")]
    later.associations[-1].extra_slots = []
    answer = _register(server, later)
    assert status(answer) == "Success", etree.tostring(answer)
    (fol,) = find_folders(server, patient).xpath("//rim:RegistryPackage", namespaces=NS)
    after = fol.xpath("rim:Slot[@name='lastUpdateTime']/rim:ValueList/rim:Value/text()",
                      namespaces=NS)[0]
    assert after >= before
    members = get_folder_and_contents(server, fol.get("id"))
    assert len(members.xpath("//rim:ExtrinsicObject", namespaces=NS)) == 2


def test_iti42_adding_to_folder_of_another_patient_is_refused(server, cli):
    patient, other = _patient(cli), _patient(cli)
    assert status(_register(server, F.submission(other, with_folder=True))) == "Success"
    (fol,) = find_folders(server, other).xpath("//rim:RegistryPackage", namespaces=NS)
    later = F.submission(patient)
    link = Association(id="link1", type=V.HAS_MEMBER, source=fol.get("id"),
                       target=later.documents[0].id)
    later.associations += [link, F.member(later.submission_set.id, "link1")]
    later.associations[-1].extra_slots = []
    assert error_codes(_register(server, later)) == ["XDSPatientIdDoesNotMatch"]

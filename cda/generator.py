"""Realistic French CDA R2 documents for tests and benchmarks: a lab report (CR-BIO), a
discharge letter (LDL-SES) and a vaccination note (VAC-NOTE), with a CI-SIS header
(INS with a valid key, RPPS authors, FINESS custodian, legal authenticator, encounter)
and entries our summary reads. Their output passes the ANS extended CDA schema, the volet's
CI-SIS schematron and our header rules (``tests/test_cda_validation.py``).

Everything inserted is escaped; ``seed`` makes a document reproducible.
"""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from xml.sax.saxutils import escape, quoteattr

INS_NIR_TEST = "1.2.250.1.213.1.4.10"
LOINC = "2.16.840.1.113883.6.1"

#: (LOINC, label, unit, low, high, typical) for lab results.
LAB_TESTS = [
    ("2345-7", "Glucose [Moles/Volume] Sérum/Plasma ; Numérique", "mmol/L", 3.9, 5.8, 5.1),
    ("2160-0", "Créatinine [Masse/Volume] Sérum/Plasma ; Numérique", "mg/L", 6.0, 12.0, 9.0),
    ("3016-3", "Thyréostimuline [Arbitraire/Volume] Sérum/Plasma ; Numérique", "m[IU]/L",
     0.27, 4.2, 1.9),
    ("2951-2", "Sodium [Moles/Volume] Sérum/Plasma ; Numérique", "mmol/L", 136.0, 145.0, 140.0),
    ("2823-3", "Potassium [Moles/Volume] Sérum/Plasma ; Numérique", "mmol/L", 3.5, 5.1, 4.2),
    ("718-7", "Hémoglobine [Masse/Volume] Sang ; Numérique", "g/dL", 12.0, 16.0, 13.8),
    ("6690-2", "Leucocytes [Nombre/Volume] Sang ; Numérique", "10*9/L", 4.0, 10.0, 6.5),
    ("777-3", "Plaquettes [Nombre/Volume] Sang ; Numérique", "10*9/L", 150.0, 400.0, 250.0),
    ("2093-3", "Cholestérol [Masse/Volume] Sérum/Plasma ; Numérique", "g/L", 1.5, 2.0, 1.8),
    ("1742-6", "Alanine aminotransférase [Enzymatique/Volume] Sérum/Plasma ; Numérique",
     "U/L", 7.0, 40.0, 22.0),
]
FAMILIES = ["MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "RICHARD", "PETIT", "DURAND"]
GIVEN_F = ["CLAIRE", "JEANNE", "MARIE", "LUCIE", "ANNE"]
GIVEN_M = ["PAUL", "PIERRE", "LOUIS", "MARC", "JEAN"]


def _a(value) -> str:
    return quoteattr(str(value))


def _t(value) -> str:
    return escape(str(value))


def ins_with_key(nir13: str) -> str:
    digits = nir13.upper().replace("2A", "19").replace("2B", "18")
    return f"{nir13}{97 - int(digits) % 97:02d}"


def random_ins(rng: random.Random) -> tuple[str, str, str]:
    """(INS, gender, birth date YYYYMMDD)."""
    sex = rng.choice("12")
    year = rng.randint(1930, 2015)
    month = rng.randint(1, 12)
    nir = f"{sex}{year % 100:02d}{month:02d}{rng.randint(1, 95):02d}{rng.randint(1, 999):03d}" \
          f"{rng.randint(1, 999):03d}"
    return ins_with_key(nir), ("M" if sex == "1" else "F"), f"{year}{month:02d}{rng.randint(1, 28):02d}"


def rpps(rng: random.Random) -> str:
    return "8" + "".join(str(rng.randint(0, 9)) for _ in range(11))


class _Ctx:
    def __init__(self, seed: int | None, ins: str | None, when: datetime | None) -> None:
        self.rng = rng = random.Random(seed)
        gen_ins, self.gender, self.birth = random_ins(rng)
        self.ins = ins or gen_ins
        self.family = rng.choice(FAMILIES)
        self.given = rng.choice(GIVEN_M if self.gender == "M" else GIVEN_F)
        self.when = when or datetime(2024, 3, 1, 9, 30) + timedelta(minutes=rng.randint(0, 500000))
        self.author_id = rpps(rng)
        self.author_family = rng.choice(FAMILIES)
        self.author_given = rng.choice(GIVEN_M + GIVEN_F).capitalize()
        self.org_id = "".join(str(rng.randint(0, 9)) for _ in range(9))
        self.uid = f"2.25.{uuid.UUID(int=rng.getrandbits(128)).int}"

    def ts(self, minutes: int = 0) -> str:
        return (self.when + timedelta(minutes=minutes)).strftime("%Y%m%d%H%M%S") + "+0100"


def _organization(ctx: _Ctx, name: str, tag: str = "representedOrganization",
                  practice: tuple[str, str] | None = None) -> str:
    sic = (f'<standardIndustryClassCode code={_a(practice[0])} displayName={_a(practice[1])} '
           f'codeSystem="1.2.250.1.213.1.1.4.9"/>') if practice else ""
    return (f'<{tag}><id root="1.2.250.1.71.4.2.2" extension={_a(ctx.org_id)}/>'
            f'<name>{_t(name)}</name><telecom value="tel:0144000000" use="WP"/>'
            f'<addr><houseNumber>8</houseNumber><streetName>Rue de la Santé</streetName>'
            f'<postalCode>75014</postalCode><city>PARIS</city></addr>{sic}</{tag}>')


def _assigned(ctx: _Ctx, tag: str, org: str, specialty: tuple[str, str],
              practice: tuple[str, str] | None = None) -> str:
    return (f'<{tag}><id root="1.2.250.1.71.4.2.1" extension={_a(ctx.author_id)}/>'
            f'<code code={_a(specialty[0])} displayName={_a(specialty[1])} '
            f'codeSystem="1.2.250.1.213.1.1.4.5"/>'
            f'<addr><houseNumber>8</houseNumber><streetName>Rue de la Santé</streetName>'
            f'<postalCode>75014</postalCode><city>PARIS</city></addr>'
            f'<telecom value="tel:0144000001" use="WP"/>'
            f'<assignedPerson><name><prefix>DR</prefix><given>{_t(ctx.author_given)}</given>'
            f'<family>{_t(ctx.author_family)}</family></name></assignedPerson>'
            f'{_organization(ctx, org, practice=practice)}</{tag}>')


def _header(ctx: _Ctx, templates: list[str], code: tuple[str, str, str], title: str,
            org: str, specialty: tuple[str, str], practice: tuple[str, str],
            facility: tuple[str, str], service_code: tuple[str, ...] | None) -> str:
    tids = "".join(f"<templateId root={_a(t)}/>" if "@" not in t else
                   f"<templateId root={_a(t.split('@')[0])} extension={_a(t.split('@')[1])}/>"
                   for t in templates)
    event = ""
    if service_code:
        event = (f'<documentationOf><serviceEvent><code code={_a(service_code[0])} '
                 f'displayName={_a(service_code[1])} '
                 f'codeSystem={_a(service_code[2] if len(service_code) > 2 else LOINC)}/>'
                 f'<effectiveTime><low value="{ctx.ts(-180)}"/><high value="{ctx.ts(-10)}"/>'
                 f'</effectiveTime><performer typeCode="PRF">'
                 '<templateId root="1.3.6.1.4.1.19376.1.3.3.1.7"/>'
                 f'<time><high value="{ctx.ts(-20)}"/></time>'
                 f'{_assigned(ctx, "assignedEntity", org, specialty, practice)}</performer>'
                 f'</serviceEvent></documentationOf>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<realmCode code="FR"/><typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>'
        '<templateId root="2.16.840.1.113883.2.8.2.1"/><templateId root="1.2.250.1.213.1.1.1.1"/>'
        f'{tids}<id root={_a(ctx.uid)}/>'
        f'<code code={_a(code[0])} displayName={_a(code[1])} codeSystem={_a(code[2])}/>'
        f'<title>{_t(title)}</title><effectiveTime value="{ctx.ts()}"/>'
        '<confidentialityCode code="N" displayName="Normal" codeSystem="2.16.840.1.113883.5.25"/>'
        f'<languageCode code="fr-FR"/><setId root={_a(ctx.uid + ".0")}/><versionNumber value="1"/>'
        '<recordTarget><patientRole>'
        f'<id root="{INS_NIR_TEST}" extension={_a(ctx.ins)}/>'
        f'<id root="1.2.250.1.999.1" extension={_a(str(ctx.rng.randint(10**6, 10**7)))}/>'
        '<addr use="H"><houseNumber>12</houseNumber><streetName>Rue des Lilas</streetName>'
        '<postalCode>69003</postalCode><city>LYON</city></addr>'
        '<telecom value="tel:0600000000" use="MC"/>'
        f'<patient classCode="PSN"><name><family qualifier="BR">{_t(ctx.family)}</family>'
        f'<given qualifier="BR">{_t(ctx.given)}</given></name>'
        f'<administrativeGenderCode code="{ctx.gender}" codeSystem="2.16.840.1.113883.5.1"/>'
        f'<birthTime value="{ctx.birth}"/></patient></patientRole></recordTarget>'
        f'<author><time value="{ctx.ts()}"/>'
        f'{_assigned(ctx, "assignedAuthor", org, specialty, practice)}</author>'
        '<custodian><assignedCustodian>'
        f'{_organization(ctx, org, "representedCustodianOrganization")}'
        '</assignedCustodian></custodian>'
        f'<legalAuthenticator><time value="{ctx.ts()}"/><signatureCode code="S"/>'
        f'{_assigned(ctx, "assignedEntity", org, specialty, practice)}</legalAuthenticator>'
        f'{event}'
        '<componentOf><encompassingEncounter>'
        f'<effectiveTime><low value="{ctx.ts(-240)}"/></effectiveTime>'
        f'<responsibleParty>{_assigned(ctx, "assignedEntity", org, specialty)}</responsibleParty>'
        '<location><healthCareFacility>'
        f'<code code={_a(facility[0])} displayName={_a(facility[1])} codeSystem="1.2.250.1.71.4.2.4"/>'
        '</healthCareFacility></location></encompassingEncounter></componentOf>'
    )


def _lab_observation(ctx: _Ctx, n: int, test) -> tuple[str, str]:
    code, label, unit, low, high, typical = test
    rng = ctx.rng
    value = round(typical * rng.uniform(0.6, 1.5), 2)
    interp = "N" if low <= value <= high else ("L" if value < low else "H")
    row = (f"<tr><td><content ID=\"res-{n}\">{_t(label)}</content></td>"
           f"<td>{value} {_t(unit)}</td><td>{low} - {high}</td><td>{interp}</td></tr>")
    obs = (
        '<entryRelationship typeCode="COMP"><observation classCode="OBS" moodCode="EVN">'
        '<templateId root="1.3.6.1.4.1.19376.1.3.1.6"/><templateId root="1.2.250.1.213.1.1.3.80"/>'
        f'<code code={_a(code)} displayName={_a(label)} codeSystem="{LOINC}" codeSystemName="LOINC">'
        f'<originalText><reference value="#res-{n}"/></originalText></code>'
        f'<statusCode code="completed"/><effectiveTime value="{ctx.ts(-60)}"/>'
        f'<value xsi:type="PQ" value="{value}" unit={_a(unit)}/>'
        f'<interpretationCode code="{interp}" codeSystem="2.16.840.1.113883.5.83"/>'
        '<referenceRange typeCode="REFV"><observationRange classCode="OBS" moodCode="EVN.CRT">'
        f'<value xsi:type="IVL_PQ"><low value="{low}" unit={_a(unit)}/>'
        f'<high value="{high}" unit={_a(unit)}/></value>'
        '<interpretationCode code="N" codeSystem="2.16.840.1.113883.5.83"/>'
        '</observationRange></referenceRange></observation></entryRelationship>')
    return row, obs


def _pdf(lines: list[str], padding: bytes = b"") -> bytes:
    """A valid one-page PDF listing ``lines`` (the report's human-readable copy); a
    ``padding`` stream object (unreferenced) makes it as large as wanted."""
    text = "BT /F1 10 Tf 50 800 Td 12 TL " + " ".join(
        "(" + ln.replace("\\", "").replace("(", "").replace(")", "")
        .encode("latin-1", "replace").decode("latin-1") + ") '" for ln in lines[:60]) + " ET"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(text.encode("latin-1")) + text.encode("latin-1")
               + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    if padding:
        objects.append(b"<< /Length %d >>\nstream\n" % len(padding) + padding + b"\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for n, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)


def _pdf_copy(ctx: _Ctx, rows: list[str]) -> str:
    """The CR-BIO "FR-Document-PDF-copie" section (1.2.250.1.213.1.1.2.243)."""
    import base64
    import re as _re
    lines = ["Compte rendu d'examens biologiques", f"Patient : {ctx.given} {ctx.family}"]
    lines += [" ".join(_re.sub(r"<[^>]+>", " ", r).split()) for r in rows]
    pdf = base64.b64encode(_pdf(lines)).decode("ascii")
    rid = lambda: str(uuid.UUID(int=ctx.rng.getrandbits(128))).upper()  # noqa: E731
    return (
        '<component><section><templateId root="1.2.250.1.213.1.1.2.243"/>'
        f'<id root="{rid()}"/>'
        f'<code code="55108-5" displayName="Copie du document" codeSystem="{LOINC}"/>'
        '<title>Copie du document</title><text><table><tbody><tr><td>'
        '<renderMultiMedia referencedObject="doc-1"/></td></tr></tbody></table></text>'
        '<entry><organizer classCode="CLUSTER" moodCode="EVN">'
        f'<templateId root="1.2.250.1.213.1.1.3.18"/><id root="{rid()}"/>'
        f'<code code="55107-7" displayName="Document attaché" codeSystem="{LOINC}"/>'
        '<statusCode code="completed"/><component><observation classCode="OBS" moodCode="EVN">'
        '<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.13"/>'
        '<templateId root="1.2.250.1.213.1.1.3.48"/><templateId root="1.2.250.1.213.1.1.3.48.18"/>'
        f'<id root="{rid()}"/>'
        f'<code code="69764-9" displayName="Type de document" codeSystem="{LOINC}"/>'
        '<statusCode code="completed"/><effectiveTime nullFlavor="NA"/>'
        f'<value xsi:type="CD" code="55108-5" displayName="Copie du document" codeSystem="{LOINC}"/>'
        '</observation></component><component>'
        '<observationMedia classCode="OBS" moodCode="EVN" ID="doc-1">'
        f'<value mediaType="application/pdf" representation="B64">{pdf}</value>'
        '</observationMedia></component></organizer></entry></section></component>')


def lab_report(seed: int | None = None, results: int = 12, ins: str | None = None,
               blood_group: str | None = "A+", when: datetime | None = None) -> bytes:
    """A CR-BIO lab report (BIO-CR-BIO, XD-LAB) with ``results`` numeric results and
    optionally an ABO-Rh blood group. About 2.2 KB per result."""
    ctx = _Ctx(seed, ins, when)
    head = _header(ctx, ["1.3.6.1.4.1.19376.1.3.3", "1.2.250.1.213.1.1.1.55"],
                   ("11502-2", "CR d'examens biologiques", LOINC),
                   "Compte rendu d'examens biologiques", "Laboratoire de biologie médicale du Parc",
                   ("G15_10/SM03", "Médecin - Biologie médicale (SM)"),
                   ("AMBULATOIRE", "Ambulatoire"),
                   ("SA25", "Laboratoire de biologie médicale"), ("18719-5", "Biochimie"))
    rows, entries = [], []
    for n in range(results):
        row, obs = _lab_observation(ctx, n, LAB_TESTS[n % len(LAB_TESTS)])
        rows.append(row)
        entries.append(obs)
    blood = ""
    if blood_group:
        blood = (
            '<component><section><templateId root="1.3.6.1.4.1.19376.1.3.3.2.1"/>'
            f'<code code="18717-9" displayName="Banque du sang" codeSystem="{LOINC}"/>'
            '<title>IMMUNO-HÉMATOLOGIE</title>'
            f'<text><paragraph>Groupe sanguin ABO-Rh : <content ID="abo">{_t(blood_group)}</content>'
            '</paragraph></text><entry typeCode="DRIV">'
            '<templateId root="1.3.6.1.4.1.19376.1.3.1"/><act classCode="ACT" moodCode="EVN">'
            f'<code code="18717-9" codeSystem="{LOINC}"/><statusCode code="completed"/>'
            '<entryRelationship typeCode="COMP"><observation classCode="OBS" moodCode="EVN">'
            '<templateId root="1.3.6.1.4.1.19376.1.3.1.6"/>'
            f'<code code="882-1" displayName="Groupe sanguin ABO et Rhésus" codeSystem="{LOINC}"/>'
            f'<statusCode code="completed"/><effectiveTime value="{ctx.ts(-60)}"/>'
            f'<value xsi:type="CD" code={_a(blood_group)} displayName={_a(blood_group)} '
            'codeSystem="1.2.250.1.213.1.1.4.999"/></observation></entryRelationship>'
            '</act></entry></section></component>')
    body = (
        '<component><structuredBody><component><section>'
        '<templateId root="1.3.6.1.4.1.19376.1.3.3.2.1"/><templateId root="1.2.250.1.213.1.1.2.70"/>'
        f'<code code="18719-5" displayName="Biochimie" codeSystem="{LOINC}"/><title>BIOCHIMIE</title>'
        '<text><table><thead><tr><th>Examen</th><th>Résultat</th><th>Valeurs de référence</th>'
        f'<th>Interprétation</th></tr></thead><tbody>{"".join(rows)}</tbody></table></text>'
        '<entry typeCode="DRIV"><templateId root="1.3.6.1.4.1.19376.1.3.1"/>'
        '<templateId root="1.2.250.1.213.1.1.3.21"/><act classCode="ACT" moodCode="EVN">'
        f'<code code="18719-5" displayName="Biochimie" codeSystem="{LOINC}"/>'
        f'<statusCode code="completed"/>{"".join(entries)}</act></entry>'
        f'</section></component>{blood}{_pdf_copy(ctx, rows)}'
        '</structuredBody></component></ClinicalDocument>')
    return (head + body).encode("utf-8")


def unstructured_report(seed: int | None = None, pdf_bytes: int = 0, ins: str | None = None,
                        when: datetime | None = None) -> bytes:
    """A CDA level 1 (CI-SIS "document non structuré", IHE XDS-SD template
    1.3.6.1.4.1.19376.1.2.20): a lab report whose body is a base64 PDF
    (``nonXMLBody``) of at least ``pdf_bytes`` bytes (random filler in an unreferenced
    stream object), for the repository's large-document paths."""
    import base64
    ctx = _Ctx(seed, ins, when)
    head = _header(ctx, ["1.3.6.1.4.1.19376.1.2.20"],
                   ("11502-2", "CR d'examens biologiques", LOINC),
                   "Compte rendu d'examens biologiques", "Laboratoire de biologie médicale du Parc",
                   ("G15_10/SM03", "Médecin - Biologie médicale (SM)"),
                   ("AMBULATOIRE", "Ambulatoire"),
                   ("SA25", "Laboratoire de biologie médicale"), ("18719-5", "Biochimie"))
    lines = ["Compte rendu d'examens biologiques", f"Patient : {ctx.given} {ctx.family}"]
    pdf = _pdf(lines, ctx.rng.randbytes(pdf_bytes) if pdf_bytes > 0 else b"")
    return (head + '<component><nonXMLBody><text mediaType="application/pdf" '
            'representation="B64">').encode("utf-8") + base64.encodebytes(pdf) + \
        b"</text></nonXMLBody></component></ClinicalDocument>"


def vaccination_note(seed: int | None = None, ins: str | None = None,
                     when: datetime | None = None) -> bytes:
    """A VAC-NOTE vaccination note with one immunization (vaccine, lot, date)."""
    ctx = _Ctx(seed, ins, when)
    head = _header(ctx, ["1.3.6.1.4.1.19376.1.5.3.1.1.18.1.2", "1.2.250.1.213.1.1.1.46@2023.01"],
                   ("87273-9", "Note de vaccination", LOINC), "Note de vaccination",
                   "Cabinet médical des Tilleuls", ("G15_10/SM26", "Médecin - Médecine générale (SM)"),
                   ("AMBULATOIRE", "Ambulatoire"), ("SA07", "Cabinet individuel"),
                   ("87273-9", "Note de vaccination"))
    lot = f"LOT{ctx.rng.randint(10000, 99999)}"
    body = (
        '<component><structuredBody><component><section>'
        '<templateId root="1.3.6.1.4.1.19376.1.5.3.1.3.23"/>'
        f'<code code="11369-6" displayName="Historique des vaccinations" codeSystem="{LOINC}"/>'
        '<title>Vaccinations</title>'
        f'<text><table><thead><tr><th>Vaccin</th><th>Date</th><th>Lot</th></tr></thead><tbody>'
        f'<tr><td><content ID="vac-1">COMIRNATY, dispersion injectable</content></td>'
        f'<td>{ctx.when:%d/%m/%Y}</td><td>{lot}</td></tr></tbody></table></text>'
        '<entry><substanceAdministration classCode="SBADM" moodCode="EVN" negationInd="false">'
        '<templateId root="2.16.840.1.113883.10.20.1.24"/>'
        '<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.12"/>'
        '<templateId root="1.2.250.1.213.1.1.3.45"/>'
        f'<id root={_a(str(uuid.UUID(int=ctx.rng.getrandbits(128))).upper())}/>'
        '<code code="IMMUNIZ" displayName="Vaccination" codeSystem="2.16.840.1.113883.5.4"/>'
        '<text><reference value="#vac-1"/></text><statusCode code="completed"/>'
        f'<effectiveTime value="{ctx.when:%Y%m%d}"/>'
        '<consumable><manufacturedProduct><templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.7.2"/>'
        '<manufacturedMaterial>'
        '<code code="34047010" displayName="COMIRNATY, dispersion injectable" '
        'codeSystem="1.2.250.1.213.2.3.1"><translation code="J07BX03" '
        'displayName="Vaccins contre la COVID-19" codeSystem="2.16.840.1.113883.6.73"/></code>'
        f'<name>COMIRNATY</name><lotNumberText>{lot}</lotNumberText>'
        '</manufacturedMaterial></manufacturedProduct></consumable>'
        f'<author><time value="{ctx.ts()}"/><assignedAuthor>'
        f'<id root="1.2.250.1.71.4.2.1" extension={_a(ctx.author_id)}/>'
        '<code code="G15_10/SM26" displayName="Médecin - Médecine générale (SM)" '
        'codeSystem="1.2.250.1.213.1.1.4.5"/>'
        f'<assignedPerson><name><given>{_t(ctx.author_given)}</given>'
        f'<family>{_t(ctx.author_family)}</family></name></assignedPerson>'
        '</assignedAuthor></author>'
        '</substanceAdministration></entry></section></component>'
        '</structuredBody></component></ClinicalDocument>')
    return (head + body).encode("utf-8")


def discharge_letter(seed: int | None = None, ins: str | None = None,
                     when: datetime | None = None) -> bytes:
    """An LDL-SES discharge letter: reason, summary, an allergy and discharge treatments."""
    ctx = _Ctx(seed, ins, when)
    head = _header(ctx, ["1.2.250.1.213.1.1.1.29"],
                   ("11490-0", "Lettre de liaison à la sortie d'un établissement de soins", LOINC),
                   "Lettre de liaison à la sortie", "Centre hospitalier de la Croix-Rousse",
                   ("G15_10/SM54", "Médecin - Médecine interne (SM)"),
                   ("ETABLISSEMENT", "Etablissement de santé"),
                   ("SA01", "Etablissement public de santé"),
                   ("IMP", "Hospitalisation (établissement, y compris HAD)",
                    "2.16.840.1.113883.5.4"))
    med = (
        '<entry><substanceAdministration classCode="SBADM" moodCode="INT">'
        '<templateId root="2.16.840.1.113883.10.20.1.24"/>'
        '<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.7"/>'
        f'<id root={_a(str(uuid.UUID(int=ctx.rng.getrandbits(128))).upper())}/>'
        '<text><reference value="#med-1"/></text><statusCode code="completed"/>'
        f'<effectiveTime xsi:type="IVL_TS"><low value="{ctx.when:%Y%m%d}"/></effectiveTime>'
        '<doseQuantity value="1" unit="{comprimé}"/>'
        '<consumable><manufacturedProduct><templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.7.2"/>'
        '<manufacturedMaterial><code code="60904780" displayName="AMOXICILLINE 1 g, comprimé" '
        'codeSystem="1.2.250.1.213.2.3.1"/><name>AMOXICILLINE 1 g</name></manufacturedMaterial>'
        '</manufacturedProduct></consumable></substanceAdministration></entry>')
    allergy = (
        '<entry><observation classCode="OBS" moodCode="EVN">'
        '<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.6"/>'
        f'<id root={_a(str(uuid.UUID(int=ctx.rng.getrandbits(128))).upper())}/>'
        '<code code="DALG" displayName="Allergie médicamenteuse" codeSystem="2.16.840.1.113883.5.4"/>'
        '<text><reference value="#all-1"/></text><statusCode code="completed"/>'
        '<effectiveTime><low value="2010"/></effectiveTime>'
        '<value xsi:type="CD" code="DALG" displayName="Allergie médicamenteuse" '
        'codeSystem="2.16.840.1.113883.5.4"/>'
        '<participant typeCode="CSM"><participantRole classCode="MANU">'
        '<playingEntity classCode="MMAT"><code code="J01CE" displayName="Pénicillines" '
        'codeSystem="2.16.840.1.113883.6.73"/></playingEntity></participantRole></participant>'
        '</observation></entry>')
    body = (
        '<component><structuredBody>'
        '<component><section><templateId root="1.2.250.1.213.1.1.2.35"/>'
        '<templateId root="1.2.250.1.213.1.1.2.35.1"/>'
        f'<code code="33557-5" displayName="Statut du document" codeSystem="{LOINC}"/>'
        '<title>Statut du document</title>'
        '<text><paragraph>Document validé.</paragraph></text></section></component>'
        '<component><section><templateId root="1.3.6.1.4.1.19376.1.5.3.1.3.1"/>'
        f'<code code="42349-1" displayName="Raison de la recommandation" codeSystem="{LOINC}"/>'
        '<title>Motif de l\'hospitalisation</title>'
        '<text><paragraph>Pneumopathie communautaire.</paragraph></text></section></component>'
        '<component><section><templateId root="1.3.6.1.4.1.19376.1.7.3.1.1.13.7"/>'
        f'<code code="42545-4" displayName="Evènements observés" codeSystem="{LOINC}"/>'
        '<title>Synthèse médicale du séjour</title>'
        '<text><paragraph>Évolution favorable sous antibiothérapie.</paragraph></text>'
        '</section></component>'
        '<component><section><templateId root="1.3.6.1.4.1.19376.1.5.3.1.3.13"/>'
        f'<code code="48765-2" displayName="Allergies et intolérances" codeSystem="{LOINC}"/>'
        '<title>Allergies et intolérances</title>'
        '<text><list><item><content ID="all-1">Allergie aux pénicillines</content></item></list>'
        f'</text>{allergy}</section></component>'
        '<component><section><templateId root="1.3.6.1.4.1.19376.1.5.3.1.3.22"/>'
        f'<code code="10183-2" displayName="Traitements à la sortie" codeSystem="{LOINC}"/>'
        '<title>Traitements à la sortie</title>'
        '<text><table><thead><tr><th>Médicament</th><th>Posologie</th></tr></thead><tbody>'
        '<tr><td><content ID="med-1">AMOXICILLINE 1 g</content></td><td>1 comprimé matin et soir'
        f'</td></tr></tbody></table></text>{med}</section></component>'
        '</structuredBody></component></ClinicalDocument>')
    return (head + body).encode("utf-8")


GENERATORS = {"cr-bio": lab_report, "ldl-ses": discharge_letter, "vac-note": vaccination_note}

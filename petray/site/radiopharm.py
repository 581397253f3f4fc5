"""PET radiopharmaceuticals: the seed table, its database rows, and header matching (issue 3).

Codes come from DICOM PS3.16 CID 4021 (PET Radiopharmaceutical) and CID 4020 (PET Radionuclide):
each entry lists the legacy SNOMED RT ("SRT", e.g. ``C-B1031``) value, which older scanners still
send, next to its SNOMED CT ("SCT") concept id or the DCM/NCIt/UMLS code the current edition uses.
The values were taken from pydicom's generated copy of PS3.16 (``pydicom.sr.codedict`` CIDs 4020 and
4021 with ``pydicom.sr._snomed_dict`` for the SRT<->SCT map) plus older PS3.16 editions.
Half-lives are the NNDC/DDEP values in seconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import Radiopharmaceutical

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RadionuclideSpec:
    name: str
    half_life_s: float
    synonyms: tuple[str, ...]
    codes: tuple[str, ...]


@dataclass(frozen=True)
class RadiopharmaceuticalSpec:
    name: str
    nuclide: str
    half_life_s: float
    synonyms: tuple[str, ...]
    codes: tuple[str, ...]


F18, GA68, C11, N13, O15, RB82, CU64, ZR89 = (
    "F-18",
    "Ga-68",
    "C-11",
    "N-13",
    "O-15",
    "Rb-82",
    "Cu-64",
    "Zr-89",
)

RADIONUCLIDES: tuple[RadionuclideSpec, ...] = (
    RadionuclideSpec(
        F18, 6586.2, ("F-18", "18F", "Fluorine-18", "18-Fluorine"), ("C-111A1", "77004003")
    ),
    RadionuclideSpec(
        GA68, 4057.7, ("Ga-68", "68Ga", "Gallium-68", "68-Gallium"), ("C-131A3", "35337001")
    ),
    RadionuclideSpec(
        C11, 1223.1, ("C-11", "11C", "Carbon-11", "11-Carbon"), ("C-105A1", "40565003")
    ),
    RadionuclideSpec(
        N13, 597.9, ("N-13", "13N", "Nitrogen-13", "13-Nitrogen"), ("C-107A1", "21576001")
    ),
    # pydicom's PS3.16 gives ^15^Oxygen the same codes as the "Oxygen O^15^" tracer of CID 4021.
    RadionuclideSpec(
        O15, 122.2, ("O-15", "15O", "Oxygen-15", "15-Oxygen"), ("C-B1038", "129504001")
    ),
    RadionuclideSpec(
        RB82, 76.0, ("Rb-82", "82Rb", "Rubidium-82", "82-Rubidium"), ("C-159A2", "79197006")
    ),
    RadionuclideSpec(
        CU64, 45723.6, ("Cu-64", "64Cu", "Copper-64", "64-Copper"), ("C-127A2", "3932008")
    ),
    RadionuclideSpec(
        ZR89, 282276.0, ("Zr-89", "89Zr", "Zirconium-89", "89-Zirconium"), ("C-168A4", "63360001")
    ),
)
_HALF_LIFE = {n.name: n.half_life_s for n in RADIONUCLIDES}


def _rp(
    name: str, nuclide: str, synonyms: tuple[str, ...], codes: tuple[str, ...] = ()
) -> RadiopharmaceuticalSpec:
    return RadiopharmaceuticalSpec(name, nuclide, _HALF_LIFE[nuclide], synonyms, codes)


# Bare family words ("PSMA", "choline", "DOTATATE", "FAPI") are synonyms of more than one entry on
# purpose: the radionuclide picks the ligand. A longer synonym always beats a shorter one.
SEED_RADIOPHARMACEUTICALS: tuple[RadiopharmaceuticalSpec, ...] = (
    _rp(
        "FDG",
        F18,
        (
            "FDG",
            "Fludeoxyglucose",
            "Fluorodeoxyglucose",
            "Fluorodesoxiglucosa",
            "Fluordesoxyglucose",
        ),
        ("C-B1031", "35321007"),
    ),
    _rp(
        "PSMA-11",
        GA68,
        ("PSMA-11", "PSMA", "Gozetotide", "PSMA-HBED-CC", "HBED-CC", "Illuccix", "Locametz"),
        ("C118961",),
    ),
    _rp("PSMA-617", GA68, ("PSMA-617", "Vipivotide"), ("126759",)),
    _rp("PSMA-1007", F18, ("PSMA-1007", "PSMA"), ("126758",)),
    _rp("DCFPyL", F18, ("DCFPyL", "Piflufolastat", "Pylarify", "PyL"), ("C116352",)),
    _rp("rhPSMA-7.3", F18, ("rhPSMA", "rhPSMA-7.3", "Flotufolastat", "Posluma")),
    _rp("DCFBC", F18, ("DCFBC",), ("C96234",)),
    _rp("DOTATATE", GA68, ("DOTATATE", "DOTA-TATE", "Netspot", "Dotatate"), ("724025002",)),
    _rp("Cu64-DOTATATE", CU64, ("DOTATATE", "DOTA-TATE", "Detectnet")),
    _rp("DOTATOC", GA68, ("DOTATOC", "DOTA-TOC", "Edotreotide"), ("C2713594",)),
    _rp("DOTANOC", GA68, ("DOTANOC", "DOTA-NOC")),
    _rp(
        "FLT",
        F18,
        ("FLT", "Fluorothymidine", "Thymidine", "Alovudine", "Fluorotimidina"),
        ("C-B1036", "129502002"),
    ),
    _rp(
        "FES",
        F18,
        ("FES", "Fluoroestradiol", "Fluoroestradiol (FES)", "Cerianna"),
        ("926372005", "C1831937"),
    ),
    _rp(
        "NaF",
        F18,
        ("NaF", "Sodium fluoride", "Fluoride", "Fluoruro sodico"),
        ("C-B1032", "129501009"),
    ),
    _rp("Choline", C11, ("Choline", "Colina"), ("126703",)),
    _rp(
        "Fluorocholine",
        F18,
        (
            "Fluorocholine",
            "Fluoromethylcholine",
            "FCH",
            "FMCH",
            "Fluorocolina",
            "Choline",
            "Colina",
        ),
        ("C-E0273", "456992002"),
    ),
    _rp(
        "FDOPA",
        F18,
        ("FDOPA", "F-DOPA", "DOPA", "Fluorodopa", "Fluoro-L-dopa", "Fluoro-dopa"),
        ("C-B1034", "C-E0241", "5811000122108"),
    ),
    _rp("Florbetapir", F18, ("Florbetapir", "AV-45", "Amyvid"), ("C-E0269", "456995000")),
    _rp("Florbetaben", F18, ("Florbetaben", "Neuraceq", "FBB"), ("C-D6858", "712736002", "126501")),
    _rp("Flutemetamol", F18, ("Flutemetamol", "Vizamyl", "GE-067"), ("C-E0267", "456997008")),
    _rp("PiB", C11, ("PiB", "Pittsburgh compound B", "Pittsburgh compound"), ("126500",)),
    _rp(
        "Flortaucipir", F18, ("Flortaucipir", "AV-1451", "T807", "Tauvid"), ("879808000", "126502")
    ),
    _rp("Rb-82", RB82, ("Rubidium", "Rubidium chloride", "RbCl"), ("C-B1037", "129503007")),
    _rp("Ammonia", N13, ("Ammonia", "NH3", "Amonio"), ("C-B103C", "129508003")),
    _rp("Water", O15, ("Water", "H2O", "Oxygen-water", "Agua"), ("C-B1039", "129505000")),
    _rp(
        "FET",
        F18,
        ("FET", "Fluoroethyltyrosine", "Fluorethyltyrosin", "Fluoroethyl-L-tyrosine"),
        ("C-B07E0", "424708001"),
    ),
    _rp("FMISO", F18, ("FMISO", "Fluoromisonidazole"), ("C-B07E1", "422598008")),
    _rp("Fluciclovine", F18, ("Fluciclovine", "FACBC", "Axumin"), ("C-E026A", "457000009")),
    _rp("FAPI-46", GA68, ("FAPI-46", "FAPI")),
    _rp("FAPI-04", GA68, ("FAPI-04", "FAPI-4")),
    _rp("FAPI-74", F18, ("FAPI-74", "FAPI")),
    _rp("Methionine", C11, ("Methionine", "MET", "Metionina"), ("C-B103E", "129510001")),
    _rp("Acetate", C11, ("Acetate", "Acetato"), ("C-B1043", "129513004")),
    _rp("Cu-ATSM", CU64, ("ATSM",), ("C-B07DB", "422855001")),
    _rp("Zr89-mAb", ZR89, ("Monoclonal antibody", "mAb", "Antibody"), ("126511",)),
)

_SEPARATORS = re.compile(r"[^0-9a-z]+")
# "18F", "Ga68", "PSMA11": a letter/digit boundary is a word boundary, so spellings agree.
_LETTER_DIGIT = re.compile(r"(?<=[a-z])(?=[0-9])|(?<=[0-9])(?=[a-z])")


def words(text: str) -> tuple[str, ...]:
    """Lower-case words of ``text`` with punctuation and letter/digit boundaries as separators."""
    lowered = _LETTER_DIGIT.sub(" ", text.lower())
    return tuple(word for word in _SEPARATORS.split(lowered) if word)


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    size = len(needle)
    if not size:
        return False
    return any(haystack[i : i + size] == needle for i in range(len(haystack) - size + 1))


def _normal_codes(codes: Iterable[str]) -> set[str]:
    return {code.strip().upper() for code in codes if code and code.strip()}


def match_radionuclide(*, text: str, codes: Sequence[str]) -> RadionuclideSpec | None:
    """The radionuclide named by a CID 4020 code or, failing that, by whole words of ``text``."""
    wanted = _normal_codes(codes)
    for nuclide in RADIONUCLIDES:
        if wanted & _normal_codes(nuclide.codes):
            return nuclide
    tokens = words(text)
    found = {
        nuclide
        for nuclide in RADIONUCLIDES
        if any(_contains(tokens, words(synonym)) for synonym in nuclide.synonyms)
    }
    # Two different nuclides in one text is a contradiction, not a choice.
    return found.pop() if len(found) == 1 else None


def _synonym_score(spec: RadiopharmaceuticalSpec, tokens: tuple[str, ...]) -> tuple[int, int]:
    best = (0, 0)
    for synonym in (spec.name, *spec.synonyms):
        needle = words(synonym)
        if _contains(tokens, needle):
            best = max(best, (len(needle), len("".join(needle))))
    return best


def match_radiopharmaceutical(
    *,
    text: str,
    codes: Sequence[str] = (),
    nuclide_text: str = "",
    nuclide_codes: Sequence[str] = (),
    table: Sequence[RadiopharmaceuticalSpec] = SEED_RADIOPHARMACEUTICALS,
) -> RadiopharmaceuticalSpec | None:
    """The table entry a header names: by CID 4021 code first, then by whole-word synonym.

    The radionuclide (code, its text, or failing both the tracer text itself, as in "68Ga-PSMA")
    must agree with the entry when it is known. Returns None when nothing or more than one equally
    good entry matches.
    """
    nuclide = match_radionuclide(text=nuclide_text, codes=nuclide_codes) or match_radionuclide(
        text=text, codes=()
    )
    candidates = [spec for spec in table if nuclide is None or spec.nuclide == nuclide.name]

    wanted = _normal_codes(codes)
    by_code = [spec for spec in candidates if wanted & _normal_codes(spec.codes)]
    if len(by_code) == 1:
        return by_code[0]
    if not by_code and any(wanted & _normal_codes(spec.codes) for spec in table):
        # A known tracer code with another radionuclide is a contradictory header: guessing from
        # the text would hide it.
        return None

    tokens = words(text)
    scored = [
        (score, spec) for spec in candidates if (score := _synonym_score(spec, tokens)) > (0, 0)
    ]
    if not scored:
        return None
    top = max(score for score, _ in scored)
    best = [spec for score, spec in scored if score == top]
    if len(best) > 1:
        logger.info("ambiguous radiopharmaceutical text matches %d entries", len(best))
        return None
    return best[0]


def spec_from_row(row: Radiopharmaceutical) -> RadiopharmaceuticalSpec:
    return RadiopharmaceuticalSpec(
        name=row.name,
        nuclide=row.nuclide,
        half_life_s=row.half_life_s,
        synonyms=tuple(row.synonyms or ()),
        codes=tuple(row.codes or ()),
    )


def seed_radiopharmaceuticals(
    *, session: Session, table: Sequence[RadiopharmaceuticalSpec] = SEED_RADIOPHARMACEUTICALS
) -> int:
    """Insert the seed entries whose name is not in the database yet; returns how many. No commit.

    Rows staff already edited are left alone: the database, not this table, is the site's truth.
    """
    existing = set(session.scalars(select(Radiopharmaceutical.name)))
    added = 0
    for spec in table:
        if spec.name in existing:
            continue
        session.add(
            Radiopharmaceutical(
                name=spec.name,
                nuclide=spec.nuclide,
                half_life_s=spec.half_life_s,
                synonyms=list(spec.synonyms),
                codes=list(spec.codes),
            )
        )
        added += 1
    if added:
        session.flush()
    return added


def load_table(*, session: Session) -> tuple[RadiopharmaceuticalSpec, ...]:
    """The site's radiopharmaceutical table, in insertion order (earlier entries win ties)."""
    rows = session.scalars(select(Radiopharmaceutical).order_by(Radiopharmaceutical.id))
    return tuple(spec_from_row(row) for row in rows)

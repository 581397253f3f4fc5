"""Radiopharmaceutical table, matching by code and by whole-word synonym, and database seeding."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from petray.db.models import Base, Radiopharmaceutical
from petray.site.radiopharm import (
    RADIONUCLIDES,
    SEED_RADIOPHARMACEUTICALS,
    RadiopharmaceuticalSpec,
    load_table,
    match_radionuclide,
    match_radiopharmaceutical,
    seed_radiopharmaceuticals,
    words,
)

NUCLIDE = {n.name: n for n in RADIONUCLIDES}
F18_SCT, GA68_SCT, C11_SCT, CU64_SCT = "77004003", "35337001", "40565003", "3932008"


def by_name(name: str) -> RadiopharmaceuticalSpec:
    return next(spec for spec in SEED_RADIOPHARMACEUTICALS if spec.name == name)


def name_of(spec: RadiopharmaceuticalSpec | None) -> str | None:
    return None if spec is None else spec.name


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as db:
        yield db
    engine.dispose()


def test_half_lives_of_the_common_nuclides() -> None:
    expected = {"F-18": 6586.2, "Ga-68": 4057.7, "C-11": 1223.1, "N-13": 597.9, "O-15": 122.2}
    assert {name: NUCLIDE[name].half_life_s for name in expected} == expected
    assert NUCLIDE["Rb-82"].half_life_s == pytest.approx(76, abs=1)
    assert NUCLIDE["Cu-64"].half_life_s == pytest.approx(12.7 * 3600, rel=1e-3)
    assert NUCLIDE["Zr-89"].half_life_s == pytest.approx(78.41 * 3600, rel=1e-3)


def test_every_entry_takes_its_nuclide_half_life_and_names_are_unique() -> None:
    names = [spec.name for spec in SEED_RADIOPHARMACEUTICALS]
    assert len(names) == len(set(names))
    for spec in SEED_RADIOPHARMACEUTICALS:
        assert spec.half_life_s == NUCLIDE[spec.nuclide].half_life_s, spec.name


def test_no_code_belongs_to_two_entries() -> None:
    codes = [code for spec in SEED_RADIOPHARMACEUTICALS for code in spec.codes]
    assert len(codes) == len(set(codes))


def test_seed_covers_the_tracers_the_issue_names() -> None:
    names = {spec.name for spec in SEED_RADIOPHARMACEUTICALS}
    assert {
        "FDG", "PSMA-11", "PSMA-1007", "DCFPyL", "rhPSMA-7.3", "DOTATATE", "DOTATOC", "FLT",
        "FES", "NaF", "Choline", "Fluorocholine", "FDOPA", "Florbetapir", "Florbetaben",
        "Flutemetamol", "PiB", "Rb-82", "Ammonia", "Water", "FET", "FAPI-46",
    } <= names  # fmt: skip


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("C-B1031", "FDG"),  # legacy SRT
        ("35321007", "FDG"),  # SNOMED CT
        (" c-b1031 ", "FDG"),
        ("C-B1032", "NaF"),
        ("129501009", "NaF"),
        ("C118961", "PSMA-11"),
        ("126758", "PSMA-1007"),
        ("724025002", "DOTATATE"),
        ("C-E0273", "Fluorocholine"),
        ("126703", "Choline"),
        ("129505000", "Water"),
        ("C-B1037", "Rb-82"),
    ],
)
def test_match_by_code(code: str, expected: str) -> None:
    # The text is deliberately useless: the code alone must decide.
    assert name_of(match_radiopharmaceutical(text="TRACER", codes=[code])) == expected


def test_code_wins_over_text() -> None:
    spec = match_radiopharmaceutical(text="Fluorothymidine", codes=["35321007"])
    assert name_of(spec) == "FDG"


@pytest.mark.parametrize(
    "text",
    [
        "FDG",
        "fdg",
        "18F-FDG",
        "F-18 FDG",
        "F18-FDG",
        "[18F]FDG",
        "Fludeoxyglucose F^18^",
        "Fluorodeoxyglucose",
        "FDG -- fluorodeoxyglucose",
        "FDG/fluorodeoxyglucose",
    ],
)
def test_match_fdg_by_synonym(text: str) -> None:
    assert name_of(match_radiopharmaceutical(text=text)) == "FDG"


@pytest.mark.parametrize(
    "text", ["FDGX", "XFDG", "FDGs", "PSMAX", "Fluorodeoxyglucosex", "Waterfall", "Cholines", ""]
)
def test_never_matches_a_substring(text: str) -> None:
    assert match_radiopharmaceutical(text=text, nuclide_codes=[F18_SCT]) is None
    assert match_radiopharmaceutical(text=text) is None


@pytest.mark.parametrize(
    ("text", "nuclide_codes", "nuclide_text", "expected"),
    [
        ("PSMA", [GA68_SCT], "", "PSMA-11"),
        ("PSMA", [F18_SCT], "", "PSMA-1007"),
        ("PSMA", [], "^68^Gallium", "PSMA-11"),
        ("PSMA", [], "Fluorine-18", "PSMA-1007"),
        ("68Ga-PSMA", [], "", "PSMA-11"),  # nuclide from the tracer text itself
        ("18F-PSMA", [], "", "PSMA-1007"),
        ("Ga-68 PSMA-11", [], "", "PSMA-11"),
        ("PSMA-1007", [], "", "PSMA-1007"),  # the longer synonym beats bare "PSMA"
        ("18F-DCFPyL PSMA", [], "", "DCFPyL"),
        ("F-18 rhPSMA-7.3", [], "", "rhPSMA-7.3"),
        ("Choline", [C11_SCT], "", "Choline"),
        ("Choline", [F18_SCT], "", "Fluorocholine"),
        ("DOTATATE", [GA68_SCT], "", "DOTATATE"),
        ("DOTATATE", [CU64_SCT], "", "Cu64-DOTATATE"),
        ("FAPI", [F18_SCT], "", "FAPI-74"),
        ("FAPI", [GA68_SCT], "", "FAPI-46"),
    ],
)
def test_nuclide_picks_the_ligand(
    text: str, nuclide_codes: list[str], nuclide_text: str, expected: str
) -> None:
    spec = match_radiopharmaceutical(
        text=text, codes=[], nuclide_text=nuclide_text, nuclide_codes=nuclide_codes
    )
    assert name_of(spec) == expected


@pytest.mark.parametrize("text", ["PSMA", "Choline", "DOTATATE", "FAPI"])
def test_family_word_without_nuclide_is_ambiguous(text: str) -> None:
    assert match_radiopharmaceutical(text=text) is None


def test_nuclide_must_agree_with_the_tracer() -> None:
    assert match_radiopharmaceutical(text="FDG", nuclide_codes=[GA68_SCT]) is None
    assert match_radiopharmaceutical(text="FDG", nuclide_text="^11^Carbon") is None
    # A known code contradicted by the nuclide is not rescued by the text.
    contradictory = match_radiopharmaceutical(
        text="PSMA", codes=["C-B1031"], nuclide_codes=[GA68_SCT]
    )
    assert contradictory is None
    assert name_of(match_radiopharmaceutical(text="FDG", nuclide_codes=["C-111A1"])) == "FDG"


def test_every_entry_is_found_by_its_own_name_and_codes() -> None:
    for spec in SEED_RADIOPHARMACEUTICALS:
        nuclide_code = NUCLIDE[spec.nuclide].codes[-1]
        assert match_radiopharmaceutical(text=spec.name, nuclide_codes=[nuclide_code]) == spec
        for code in spec.codes:
            found = match_radiopharmaceutical(text="", codes=[code], nuclide_codes=[nuclide_code])
            assert found == spec, (spec.name, code)


def test_match_radionuclide_by_code_and_text() -> None:
    assert match_radionuclide(text="", codes=["C-111A1"]) == NUCLIDE["F-18"]
    assert match_radionuclide(text="^68^Gallium", codes=[]) == NUCLIDE["Ga-68"]
    assert match_radionuclide(text="68Ga", codes=[]) == NUCLIDE["Ga-68"]
    assert match_radionuclide(text="Ga-68 and F-18", codes=[]) is None
    assert match_radionuclide(text="Gallium", codes=[]) is None


def test_words_split_punctuation_and_letter_digit_boundaries() -> None:
    assert words("Fludeoxyglucose F^18^") == ("fludeoxyglucose", "f", "18")
    assert words("[68Ga]Ga-PSMA-11") == ("68", "ga", "ga", "psma", "11")


def test_custom_table_is_used() -> None:
    custom = (RadiopharmaceuticalSpec("Tracer-X", "F-18", 6586.2, ("TRX",), ("999",)),)
    assert match_radiopharmaceutical(text="TRX", table=custom) == custom[0]
    assert match_radiopharmaceutical(text="FDG", table=custom) is None


def test_seed_inserts_missing_rows_only_and_never_commits(session: Session) -> None:
    assert seed_radiopharmaceuticals(session=session) == len(SEED_RADIOPHARMACEUTICALS)
    assert seed_radiopharmaceuticals(session=session) == 0
    assert load_table(session=session) == SEED_RADIOPHARMACEUTICALS
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Radiopharmaceutical)) == 0


def test_seed_keeps_rows_staff_edited(session: Session) -> None:
    session.add(
        Radiopharmaceutical(name="FDG", nuclide="F-18", half_life_s=6586.2, synonyms=["GLUCO"])
    )
    session.flush()
    added = seed_radiopharmaceuticals(session=session)
    assert added == len(SEED_RADIOPHARMACEUTICALS) - 1
    table = load_table(session=session)
    fdg = next(spec for spec in table if spec.name == "FDG")
    assert fdg.synonyms == ("GLUCO",)
    assert name_of(match_radiopharmaceutical(text="gluco", table=table)) == "FDG"
    assert match_radiopharmaceutical(text="Fluorodeoxyglucose", table=table) is None


def test_digits_glued_to_letters_are_a_word_boundary() -> None:
    # "18FDG" is a real spelling; the price is that "FDG2" reads as "FDG 2", which is still FDG.
    assert name_of(match_radiopharmaceutical(text="18FDG")) == "FDG"

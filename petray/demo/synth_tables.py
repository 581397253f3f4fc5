"""What the synthetic PET series are made of: tracers with their codes, and vendor flavours.

Data, not code: a tracer or a vendor is a row here (PS3.16 CID 4020/4021 codes, half-lives,
reconstruction naming); petray.demo.synth turns a row into a series.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from petray.errors import ConfigurationError


@dataclass(frozen=True)
class CodedConcept:
    """A code sequence item: value, scheme and meaning (PS3.3 8.8)."""

    value: str
    scheme: str
    meaning: str

    def item(self) -> Dataset:
        ds = Dataset()
        ds.CodeValue = self.value
        ds.CodingSchemeDesignator = self.scheme
        ds.CodeMeaning = self.meaning
        return ds


@dataclass(frozen=True)
class Radionuclide:
    name: str
    code: CodedConcept  # CID 4020 PET Radionuclide
    half_life_s: float
    positron_fraction: float


@dataclass(frozen=True)
class Tracer:
    name: str  # canonical petray name
    radiopharmaceutical: str  # free text written to Radiopharmaceutical (0018,0031)
    code: CodedConcept  # CID 4021 PET Radiopharmaceutical
    nuclide: Radionuclide
    dose_mbq: float  # typical adult injected activity
    uptake_s: int  # typical delay from injection to the start of the scan
    aliases: tuple[str, ...] = ()


F18 = Radionuclide("F-18", CodedConcept("77004003", "SCT", "^18^Fluorine"), 6586.2, 0.9673)
GA68 = Radionuclide("Ga-68", CodedConcept("35337001", "SCT", "^68^Gallium"), 4062.6, 0.8891)
C11 = Radionuclide("C-11", CodedConcept("40565003", "SCT", "^11^Carbon"), 1221.8, 0.9976)
N13 = Radionuclide("N-13", CodedConcept("21576001", "SCT", "^13^Nitrogen"), 597.9, 0.9982)
O15 = Radionuclide("O-15", CodedConcept("129504001", "SCT", "^15^Oxygen"), 122.24, 0.9989)
RB82 = Radionuclide("Rb-82", CodedConcept("79197006", "SCT", "^82^Rubidium"), 76.38, 0.9545)

# Codes are those of CID 4021 (PS3.16); a few tracers only have DCM or NCIt codes there.
TRACERS: tuple[Tracer, ...] = (
    Tracer(
        "FDG",
        "Fluorodeoxyglucose",
        CodedConcept("35321007", "SCT", "Fluorodeoxyglucose F^18^"),
        F18,
        300.0,
        3600,
        ("18F-FDG", "F18-FDG", "FLUORODEOXYGLUCOSE"),
    ),
    Tracer(
        "PSMA-11",
        "Ga-68 PSMA-11",
        CodedConcept("C118961", "NCIt", "PSMA-11 Ga^68^"),
        GA68,
        150.0,
        3600,
        ("PSMA", "68GA-PSMA", "GA68-PSMA", "GA-68 PSMA-11", "PSMA11"),
    ),
    Tracer(
        "PSMA-1007",
        "F-18 PSMA-1007",
        CodedConcept("126758", "DCM", "PSMA-1007 F^18^"),
        F18,
        250.0,
        5400,
        ("18F-PSMA-1007", "F18-PSMA", "PSMA1007"),
    ),
    Tracer(
        "DOTATATE",
        "Ga-68 DOTATATE",
        CodedConcept("724025002", "SCT", "Dotatate Ga^68^"),
        GA68,
        150.0,
        3600,
        ("68GA-DOTATATE", "GA68-DOTATATE"),
    ),
    Tracer(
        "FLT",
        "Fluorothymidine",
        CodedConcept("129502002", "SCT", "Thymidine F^18^"),
        F18,
        300.0,
        3600,
        ("18F-FLT", "FLUOROTHYMIDINE"),
    ),
    Tracer(
        "NaF",
        "Sodium fluoride",
        CodedConcept("129501009", "SCT", "Sodium fluoride F^18^"),
        F18,
        200.0,
        2700,
        ("18F-NAF", "SODIUM FLUORIDE", "FLUORIDE"),
    ),
    Tracer(
        "Choline",
        "C-11 Choline",
        CodedConcept("126703", "DCM", "Choline C^11^"),
        C11,
        400.0,
        300,
        ("11C-CHOLINE", "C11-CHOLINE"),
    ),
    Tracer(
        "Fluorocholine",
        "Fluorocholine",
        CodedConcept("456992002", "SCT", "Fluorocholine F^18^"),
        F18,
        250.0,
        600,
        ("FCH", "18F-CHOLINE", "18F-FCH"),
    ),
    Tracer(
        "FDOPA",
        "Fluorodopa",
        CodedConcept("5811000122108", "SCT", "Fluoro-L-dopa F^18^"),
        F18,
        200.0,
        5400,
        ("18F-DOPA", "F-DOPA", "FLUORODOPA"),
    ),
    Tracer(
        "Florbetapir",
        "Florbetapir",
        CodedConcept("456995000", "SCT", "Florbetapir F^18^"),
        F18,
        370.0,
        3000,
        ("AMYVID", "AV-45", "AMYLOID"),
    ),
    Tracer(
        "Rb-82",
        "Rubidium chloride",
        CodedConcept("129503007", "SCT", "Rubidium chloride Rb^82^"),
        RB82,
        1100.0,
        90,
        ("RB82", "82RB", "RUBIDIUM"),
    ),
    Tracer(
        "Ammonia",
        "N-13 Ammonia",
        CodedConcept("129508003", "SCT", "Ammonia N^13^"),
        N13,
        550.0,
        120,
        ("N13-AMMONIA", "13N-AMMONIA", "NH3"),
    ),
    Tracer(
        "Water",
        "O-15 Water",
        CodedConcept("129505000", "SCT", "Oxygen-water O^15^"),
        O15,
        700.0,
        30,
        ("O15-WATER", "15O-WATER", "H2O"),
    ),
)


def find_tracer(name: str) -> Tracer:
    """The tracer whose name or alias equals ``name`` (case-insensitive, whole name only)."""
    wanted = name.strip().upper()
    for tracer in TRACERS:
        if wanted == tracer.name.upper() or wanted in tracer.aliases:
            return tracer
    known = ", ".join(t.name for t in TRACERS)
    raise ConfigurationError(f"unknown radiopharmaceutical {name!r} (known: {known})")


@dataclass(frozen=True)
class VendorFlavour:
    """What differs between scanner makers' PET headers; variation is data, not code."""

    manufacturer: str
    model_name: str
    software_versions: str
    station_name: str
    reconstruction_method: str
    iterations: int
    subsets: int
    convolution_kernel: str
    corrected_image: tuple[str, ...]
    head_first_instances: bool  # InstanceNumber 1 at the head (True) or at the feet (False)
    series_description: str
    ge_private: bool = False
    philips_private: bool = False  # the Philips PET Private Group's SUV/activity factors


VENDORS: dict[str, VendorFlavour] = {
    "siemens": VendorFlavour(
        manufacturer="SIEMENS",
        model_name="Biograph128_Vision 600 Edge",
        software_versions="VR20B",
        station_name="PETCT01",
        reconstruction_method="PSF+TOF 4i5s",
        iterations=4,
        subsets=5,
        convolution_kernel="XYZ Gauss2.00",
        corrected_image=("NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"),
        head_first_instances=False,
        series_description="PET WB AC",
    ),
    "ge": VendorFlavour(
        manufacturer="GE MEDICAL SYSTEMS",
        model_name="Discovery MI",
        software_versions="pet_coreload.46.00",
        station_name="PETMI01",
        reconstruction_method="VPFX",
        iterations=3,
        subsets=16,
        convolution_kernel="6.4",
        corrected_image=("DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"),
        head_first_instances=True,
        series_description="WB VPFX-S",
        ge_private=True,
    ),
    "philips": VendorFlavour(
        manufacturer="Philips Medical Systems",
        model_name="Vereos PET/CT",
        software_versions="3.0.2",
        station_name="VEREOS01",
        reconstruction_method="BLOB-OS-TF 3i11s",
        iterations=3,
        subsets=11,
        convolution_kernel="BLOB",
        corrected_image=("DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"),
        head_first_instances=True,
        series_description="WB CTAC",
        philips_private=True,
    ),
}

GE_PETD_CREATOR = "GEMS_PETD_01"
GE_PETD_GROUP = 0x0009
GE_IR_NUM_ITERATIONS = 0xB2  # (0009,xxB2) PET ir_num_iterations, SL
GE_IR_NUM_SUBSETS = 0xB3  # (0009,xxB3) PET ir_num_subsets, SL
GE_POST_FILTER = 0xBA  # (0009,xxBA) PET post_filter, SL
GE_POST_FILTER_PARAMETER = 0xBB  # (0009,xxBB) PET post_filt_parm, FL (mm)
GE_Z_FILTER_RATIO = 0xDC  # (0009,xxDC) PET ir_z_filter_ratio, FL
PHILIPS_PET_CREATOR = "Philips PET Private Group"
PHILIPS_PET_GROUP = 0x7053
PHILIPS_SUV_FACTOR = 0x00  # (7053,xx00) SUV Scale Factor, DS
PHILIPS_ACTIVITY_FACTOR = 0x09  # (7053,xx09) Activity Concentration Scale Factor, DS

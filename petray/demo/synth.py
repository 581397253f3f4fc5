"""Synthetic PET series (issue 2): no package ships a real PET study, so petray makes its own.

A series is a whole-body static acquisition of a phantom patient (body, brain, liver, bladder and
a few hot spherical lesions) stored as PET Image Storage with every PET Image IOD module filled in
(PS3.3 A.21), int16 pixels and a per-slice RescaleSlope giving Bq/ml. Everything, UIDs included,
derives from the spec, so the same spec always gives the same bytes. Each slice has its own random
stream seeded by (seed, slice index): dropping a slice changes no other slice.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    PositronEmissionTomographyImageStorage,
    RLELossless,
    generate_uid,
)
from scipy.ndimage import gaussian_filter

from petray.demo.synth_tables import (  # noqa: F401 - re-exported: petray.demo.synth is their API
    C11,
    F18,
    GA68,
    GE_IR_NUM_ITERATIONS,
    GE_IR_NUM_SUBSETS,
    GE_PETD_CREATOR,
    GE_PETD_GROUP,
    GE_POST_FILTER,
    GE_POST_FILTER_PARAMETER,
    GE_Z_FILTER_RATIO,
    N13,
    O15,
    PHILIPS_ACTIVITY_FACTOR,
    PHILIPS_PET_CREATOR,
    PHILIPS_PET_GROUP,
    PHILIPS_SUV_FACTOR,
    RB82,
    TRACERS,
    VENDORS,
    CodedConcept,
    Radionuclide,
    Tracer,
    VendorFlavour,
    find_tracer,
)
from petray.dicom.uids import validate_uid
from petray.errors import ConfigurationError, InvalidInstance

logger = logging.getLogger(__name__)

INT16_MAX = 32767
SECONDS_PER_DAY = 86400
DCMCJPEG = "/usr/bin/dcmcjpeg"
# Transfer syntaxes pydicom encodes itself (Dataset.compress with the installed plugins).
PYDICOM_ENCODED = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})
# pydicom 3.0 has no JPEG Lossless (process 14) encoder: DCMTK's dcmcjpeg makes those (+e1 / +el).
DCMTK_ENCODED: dict[str, str] = {JPEGLosslessSV1: "+e1", JPEGLossless: "+el"}
NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
SUPPORTED_TRANSFER_SYNTAXES = NATIVE | PYDICOM_ENCODED | frozenset(DCMTK_ENCODED)


BED_DURATION_S = 120
# PS3.3 C.8.9.1.1.3: the Units and DecayCorrection a synthetic series may be written in.
SYNTH_UNITS = ("BQML", "CNTS")
DECAY_CORRECTIONS = ("START", "ADMIN", "NONE")
# Philips counts: Bq/ml per rescaled stored value, a little different on every slice so that a
# reader applying one slice's factor to the whole series is caught.
PHILIPS_ACTIVITY_FACTOR_BASE = 3.7
PHILIPS_ACTIVITY_FACTOR_STEP = 0.01
GE_POST_FILTER_ON = 1
GE_POST_FILTER_FWHM_MM = 6.4
GE_Z_FILTER_RATIO_VALUE = 0.25
BED_OVERLAP = 0.3
DEFAULT_FOV_MM = 700.0


@dataclass(frozen=True)
class SynthSpec:
    """What series to make. ``drop`` holds 0-based slice indices (along the body, feet first)."""

    slices: int = 47
    rows: int = 128
    cols: int = 128
    seed: int = 0
    patient_id: str = "PETRAY0001"
    patient_name: str = "Doe^Jane"
    radiopharmaceutical: str = "FDG"
    vendor: str = "siemens"
    number_of_slices: bool = True
    drop: frozenset[int] = field(default_factory=frozenset)
    pixel_spacing_mm: float | None = None  # default: a 700 mm field of view
    slice_spacing_mm: float = 3.0
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    transfer_syntax: str = ExplicitVRLittleEndian
    units: str = "BQML"  # CNTS: Philips counts with the activity concentration scale factor
    decay_correction: str = "START"
    patient_weight: bool = True  # False: no PatientWeight, as some exports leave it out

    def __post_init__(self) -> None:
        # Strict when writing: an invalid spec fails here, not halfway through a series.
        if self.slices < 1 or self.rows < 8 or self.cols < 8:
            raise ConfigurationError("slices must be >= 1 and rows/cols >= 8")
        if self.vendor not in VENDORS:
            raise ConfigurationError(f"unknown vendor {self.vendor!r} (known: {sorted(VENDORS)})")
        find_tracer(self.radiopharmaceutical)
        if self.transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
            raise ConfigurationError(f"unsupported transfer syntax {self.transfer_syntax}")
        if self.units not in SYNTH_UNITS:
            raise ConfigurationError(f"units must be one of {SYNTH_UNITS}")
        if self.units == "CNTS" and not VENDORS[self.vendor].philips_private:
            raise ConfigurationError("only the philips flavour stores counts (Units CNTS)")
        if self.decay_correction not in DECAY_CORRECTIONS:
            raise ConfigurationError(f"decay correction must be one of {DECAY_CORRECTIONS}")
        if any(i < 0 or i >= self.slices for i in self.drop):
            raise ConfigurationError("drop indices must be within 0..slices-1")
        if self.slice_spacing_mm <= 0 or (self.pixel_spacing_mm or 1.0) <= 0:
            raise ConfigurationError("spacings must be positive")
        for uid in (self.study_instance_uid, self.series_instance_uid):
            if uid is not None:
                try:
                    validate_uid(uid)
                except InvalidInstance as exc:
                    raise ConfigurationError(f"invalid UID override: {exc}") from None

    @property
    def pixel_spacing(self) -> float:
        if self.pixel_spacing_mm is not None:
            return self.pixel_spacing_mm
        return round(DEFAULT_FOV_MM / max(self.rows, self.cols), 4)


@dataclass(frozen=True)
class _Patient:
    weight_kg: float
    size_m: float
    birth_date: date
    sex: str


@dataclass(frozen=True)
class _Lesion:
    x: float
    y: float
    z: float
    radius: float
    suv: float


def _uid(*parts: object) -> str:
    return str(generate_uid(PYDICOM_ROOT_UID, entropy_srcs=["petray-synth", *map(str, parts)]))


def _ds_number(value: float) -> str:
    """A DS string of at most 16 characters (PS3.5 6.2)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def _dicom_date(value: date) -> str:
    return value.strftime("%Y%m%d")


def _dicom_time(value: datetime) -> str:
    return value.strftime("%H%M%S.%f")[:13]


class _Phantom:
    """Activity concentration (Bq/ml) of a whole-body phantom, one transverse slice at a time."""

    def __init__(self, spec: SynthSpec, concentration_per_suv: float) -> None:
        rng = np.random.default_rng([spec.seed, 0xB0D7])
        self.spec = spec
        spacing = spec.pixel_spacing
        self.x = ((np.arange(spec.cols, dtype=np.float32) - (spec.cols - 1) / 2) * spacing)[None, :]
        self.y = ((np.arange(spec.rows, dtype=np.float32) - (spec.rows - 1) / 2) * spacing)[:, None]
        self.length = spec.slices * spec.slice_spacing_mm
        self.scale = concentration_per_suv
        n_lesions = int(rng.integers(3, 7))
        self.lesions = tuple(
            _Lesion(
                x=float(rng.uniform(-90, 90)),
                y=float(rng.uniform(-50, 50)),
                z=float(rng.uniform(0.45, 0.8) * self.length),
                radius=float(rng.uniform(6, 15)),
                suv=float(rng.uniform(4, 12)),
            )
            for _ in range(n_lesions)
        )

    def _ellipse(self, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2 <= 1.0

    def suv(self, z: float) -> np.ndarray:
        """SUV map at height ``z`` mm above the lowest slice (feet)."""
        u = z / self.length
        img = np.zeros((self.spec.rows, self.spec.cols), dtype=np.float32)
        if u > 0.86:  # head, brain
            img[self._ellipse(0, 0, 80, 95)] = 1.0
            img[self._ellipse(0, 0, 65, 80)] = 6.0
        elif u > 0.8:  # neck
            img[self._ellipse(0, 10, 55, 50)] = 1.0
        elif u > 0.38:  # trunk, liver on the patient's right (-x in LPS)
            img[self._ellipse(0, 0, 170, 115)] = 1.0
            if 0.55 < u < 0.7:
                img[self._ellipse(-70, 0, 80, 70)] = 2.2
            if u < 0.45:
                img[self._ellipse(0, 20, 40, 30)] = 15.0  # bladder
        else:  # legs
            img[self._ellipse(-95, 0, 70, 75)] = 1.0
            img[self._ellipse(95, 0, 70, 75)] = 1.0
        for lesion in self.lesions:
            dz = z - lesion.z
            if abs(dz) < lesion.radius:
                r = math.sqrt(lesion.radius**2 - dz**2)
                img[self._ellipse(lesion.x, lesion.y, r, r)] = lesion.suv
        return img

    def slice_values(self, index: int) -> np.ndarray:
        """Bq/ml with the partial-volume blur and correlated noise of a reconstructed image."""
        rng = np.random.default_rng([self.spec.seed, index])
        clean = gaussian_filter(self.suv(index * self.spec.slice_spacing_mm), sigma=1.2)
        noise = gaussian_filter(
            rng.standard_normal((self.spec.rows, self.spec.cols), dtype=np.float32), sigma=1.0
        )
        noisy = clean * (1.0 + 0.5 * noise) * self.scale
        clipped: np.ndarray = np.clip(noisy, 0.0, None)
        return clipped


def _to_int16(values: np.ndarray) -> tuple[np.ndarray, str]:
    """Pixels and the RescaleSlope string that maps them back to ``values`` (intercept 0)."""
    peak = float(values.max())
    slope = _ds_number(peak / INT16_MAX) if peak > 0 else "1"
    # Quantise with the slope exactly as written, so rescaling the stored pixels is exact.
    pixels = np.rint(values / float(slope)).clip(0, INT16_MAX).astype(np.int16)
    return pixels, slope


def _study_day(spec: SynthSpec) -> date:
    return date(2024, 1, 8) + timedelta(days=spec.seed % 365)


def _patient(seed: int, study_day: date) -> _Patient:
    rng = np.random.default_rng([seed, 0x9A7])
    age_years = int(rng.integers(35, 85))
    birth = study_day - timedelta(days=int(age_years * 365.25 + rng.integers(1, 300)))
    return _Patient(
        weight_kg=round(float(rng.uniform(52, 105)), 1),
        size_m=round(float(rng.uniform(1.52, 1.95)), 2),
        birth_date=birth,
        sex="F" if rng.integers(0, 2) == 0 else "M",
    )


def _age_string(birth: date, on: date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def _template(spec: SynthSpec, *, study_uid: str, series_uid: str, frame_uid: str) -> Dataset:
    """Everything shared by the slices of one series, module by module (PS3.3 A.21.3)."""
    tracer = find_tracer(spec.radiopharmaceutical)
    vendor = VENDORS[spec.vendor]
    study_day = _study_day(spec)
    patient = _patient(spec.seed, study_day)
    injection = datetime.combine(study_day, datetime.min.time()) + timedelta(hours=8, minutes=12)
    series_start = injection + timedelta(seconds=tracer.uptake_s)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = PositronEmissionTomographyImageStorage
    ds.InstanceCreationDate = _dicom_date(study_day)
    ds.InstanceCreationTime = _dicom_time(series_start + timedelta(minutes=30))
    # Patient
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = _dicom_date(patient.birth_date)
    ds.PatientSex = patient.sex
    # General Study, Patient Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = _dicom_date(study_day)
    ds.StudyTime = _dicom_time(injection - timedelta(minutes=5))
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{spec.seed % 100000:d}"
    ds.AccessionNumber = f"ACC{spec.seed % 10**9:09d}"
    ds.StudyDescription = f"PET-CT WB {tracer.name}"
    ds.PatientAge = _age_string(patient.birth_date, study_day)
    ds.PatientSize = _ds_number(patient.size_m)
    if spec.patient_weight:
        ds.PatientWeight = _ds_number(patient.weight_kg)
    # General Series, PET Series
    ds.Modality = "PT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 4 if spec.vendor == "siemens" else 3
    ds.SeriesDescription = vendor.series_description
    ds.SeriesDate = _dicom_date(study_day)
    ds.SeriesTime = _dicom_time(series_start)
    ds.BodyPartExamined = "WHOLEBODY"
    ds.Units = spec.units
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    if spec.number_of_slices:
        ds.NumberOfSlices = spec.slices
    corrected = vendor.corrected_image
    if spec.decay_correction == "NONE":
        corrected = tuple(c for c in corrected if c != "DECY")
    ds.CorrectedImage = list(corrected)
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "measured,AC_CT"
    ds.ScatterCorrectionMethod = "Model-based"
    ds.DecayCorrection = spec.decay_correction
    ds.ReconstructionDiameter = _ds_number(spec.pixel_spacing * max(spec.rows, spec.cols))
    ds.ConvolutionKernel = vendor.convolution_kernel
    ds.ReconstructionMethod = vendor.reconstruction_method
    ds.AxialAcceptance = "322"
    ds.AxialMash = [5, 6]
    ds.CollimatorType = "NONE"
    ds.CoincidenceWindowWidth = "4.73"
    window = Dataset()
    window.EnergyWindowLowerLimit = "435"
    window.EnergyWindowUpperLimit = "585"
    ds.EnergyWindowRangeSequence = DicomSequence([window])
    # PET Isotope
    info = Dataset()
    info.RadiopharmaceuticalRoute = "Intravenous route"
    info.RadiopharmaceuticalVolume = "5.0"
    info.RadiopharmaceuticalStartTime = _dicom_time(injection)
    info.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.00")
    info.RadionuclideTotalDose = _ds_number(tracer.dose_mbq * 1e6)
    info.RadionuclideHalfLife = _ds_number(tracer.nuclide.half_life_s)
    info.RadionuclidePositronFraction = _ds_number(tracer.nuclide.positron_fraction)
    info.Radiopharmaceutical = tracer.radiopharmaceutical
    info.RadionuclideCodeSequence = DicomSequence([tracer.nuclide.code.item()])
    info.RadiopharmaceuticalCodeSequence = DicomSequence([tracer.code.item()])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([info])
    # NM/PET Patient Orientation (CID 19, 20, 21)
    orientation = CodedConcept("102538003", "SCT", "recumbent").item()
    orientation.PatientOrientationModifierCodeSequence = DicomSequence(
        [CodedConcept("40199007", "SCT", "supine").item()]
    )
    ds.PatientOrientationCodeSequence = DicomSequence([orientation])
    ds.PatientGantryRelationshipCodeSequence = DicomSequence(
        [CodedConcept("102540008", "SCT", "headfirst").item()]
    )
    # Frame of Reference
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = vendor.manufacturer
    ds.InstitutionName = "Petray General Hospital"
    ds.StationName = vendor.station_name
    ds.ManufacturerModelName = vendor.model_name
    ds.DeviceSerialNumber = f"{1000 + spec.seed % 9000}"
    ds.SoftwareVersions = vendor.software_versions
    # General Image, PET Image, Image Pixel, Acquisition Context
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.cols
    ds.PixelSpacing = [_ds_number(spec.pixel_spacing)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = _ds_number(spec.slice_spacing_mm)
    ds.ActualFrameDuration = BED_DURATION_S * 1000
    ds.AcquisitionContextSequence = DicomSequence()
    if vendor.ge_private:
        block = ds.private_block(GE_PETD_GROUP, GE_PETD_CREATOR, create=True)
        block.add_new(GE_IR_NUM_ITERATIONS, "SL", vendor.iterations)
        block.add_new(GE_IR_NUM_SUBSETS, "SL", vendor.subsets)
        block.add_new(GE_POST_FILTER, "SL", GE_POST_FILTER_ON)
        block.add_new(GE_POST_FILTER_PARAMETER, "FL", GE_POST_FILTER_FWHM_MM)
        block.add_new(GE_Z_FILTER_RATIO, "FL", GE_Z_FILTER_RATIO_VALUE)
    return ds


def philips_activity_factor(index: int) -> float:
    """(7053,1009) of slice ``index`` in a synthetic Philips counts series: Bq/ml per count."""
    return round(PHILIPS_ACTIVITY_FACTOR_BASE * (1 + PHILIPS_ACTIVITY_FACTOR_STEP * index), 6)


def _philips_private(ds: Dataset, *, activity_factor: float | None, suv_factor: float) -> None:
    block = ds.private_block(PHILIPS_PET_GROUP, PHILIPS_PET_CREATOR, create=True)
    block.add_new(PHILIPS_SUV_FACTOR, "DS", _ds_number(suv_factor))
    if activity_factor is not None:
        block.add_new(PHILIPS_ACTIVITY_FACTOR, "DS", _ds_number(activity_factor))


def _bed_timing(spec: SynthSpec, index: int) -> int:
    """Bed position of a slice: beds step feet to head with BED_OVERLAP overlap (~26 cm FOV)."""
    fov_slices = max(1, round(260.0 / spec.slice_spacing_mm))
    step = max(1, round(fov_slices * (1 - BED_OVERLAP)))
    return index // step


def make_pet_series(spec: SynthSpec | None = None, /, **overrides: object) -> list[Dataset]:
    """One synthetic PET series, in InstanceNumber order, each dataset ready for ``save_as``."""
    spec = replace(spec or SynthSpec(), **overrides)  # type: ignore[arg-type]
    tracer = find_tracer(spec.radiopharmaceutical)
    vendor = VENDORS[spec.vendor]
    key = (spec.seed, spec.vendor, tracer.name, spec.slices, spec.rows, spec.cols)
    study_uid = spec.study_instance_uid or _uid("study", spec.seed, spec.patient_id)
    series_uid = spec.series_instance_uid or _uid("series", *key)
    frame_uid = _uid("frame", *key)
    template = _template(spec, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid)
    # The phantom's weight even when the header leaves it out: the activity stays the same.
    patient_weight_g = _patient(spec.seed, _study_day(spec)).weight_kg * 1000.0
    # DecayCorrection START: every image is corrected to the series start, so SUV 1 is the
    # injected dose decayed to the series start, spread over the body weight (1 g ~ 1 ml).
    decay_to_start = math.exp(-math.log(2) * tracer.uptake_s / tracer.nuclide.half_life_s)
    concentration_per_suv = tracer.dose_mbq * 1e6 * decay_to_start / patient_weight_g
    suv_per_bqml = 1.0 / concentration_per_suv
    phantom = _Phantom(spec, concentration_per_suv)
    series_start = datetime.strptime(template.SeriesDate + template.SeriesTime, "%Y%m%d%H%M%S.%f")
    decay_constant = math.log(2) / tracer.nuclide.half_life_s
    # Decay during one frame, and the decay-weighted mean time of the frame (PS3.3 C.8.9.4.1.5).
    in_frame = decay_constant * BED_DURATION_S / (1 - math.exp(-decay_constant * BED_DURATION_S))
    mean_in_frame_s = math.log(in_frame) / decay_constant
    z_feet = -spec.slice_spacing_mm * (spec.slices - 1)

    datasets: list[Dataset] = []
    for index in range(spec.slices):
        if index in spec.drop:
            continue
        number = spec.slices - index if vendor.head_first_instances else index + 1
        bed_start_s = _bed_timing(spec, index) * BED_DURATION_S
        acquired = series_start + timedelta(seconds=bed_start_s)
        frame_reference_s = bed_start_s + mean_in_frame_s
        decay_factor = math.exp(decay_constant * frame_reference_s)  # corrected to START
        values = phantom.slice_values(index)
        if spec.decay_correction == "ADMIN":
            # Corrected to the injection instead: a factor of exp(lambda * uptake) larger.
            decay_factor /= decay_to_start
            values = values / decay_to_start
        elif spec.decay_correction == "NONE":
            values = values / decay_factor  # each bed as it decayed while it was acquired
        activity_factor = philips_activity_factor(index) if spec.units == "CNTS" else None
        if activity_factor is not None:
            values = values / activity_factor
        pixels, slope = _to_int16(values)
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = _uid("instance", series_uid, index)
        ds.InstanceNumber = number
        ds.ImageIndex = number
        ds.AcquisitionDate = _dicom_date(acquired.date())
        ds.AcquisitionTime = _dicom_time(acquired)
        ds.ContentDate = ds.AcquisitionDate
        ds.ContentTime = ds.AcquisitionTime
        ds.FrameReferenceTime = _ds_number(round(frame_reference_s * 1000, 3))
        if spec.decay_correction != "NONE":  # PS3.3 C.8.9.4: Type 1C, absent for NONE
            ds.DecayFactor = _ds_number(decay_factor)
        if vendor.philips_private:
            # SUV per rescaled stored value, as Philips writes it for its own viewer.
            bqml_per_value = activity_factor or 1.0
            suv_factor = bqml_per_value * suv_per_bqml
            if spec.decay_correction == "ADMIN":
                suv_factor *= decay_to_start
            elif spec.decay_correction == "NONE":
                suv_factor *= decay_factor
            _philips_private(ds, activity_factor=activity_factor, suv_factor=suv_factor)
        z = z_feet + index * spec.slice_spacing_mm
        x0 = -(spec.cols - 1) / 2 * spec.pixel_spacing
        y0 = -(spec.rows - 1) / 2 * spec.pixel_spacing
        ds.ImagePositionPatient = [_ds_number(x0), _ds_number(y0), _ds_number(z)]
        ds.SliceLocation = _ds_number(z)
        ds.RescaleSlope = slope
        ds.PixelData = pixels.tobytes()
        ds.file_meta = _file_meta(ds.SOPInstanceUID)
        datasets.append(ds)
    datasets.sort(key=lambda d: int(d.InstanceNumber))
    return _encode(datasets, UID(spec.transfer_syntax))


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PETRAY_SYNTH"
    return meta


def _encode(datasets: list[Dataset], syntax: UID) -> list[Dataset]:
    if syntax in NATIVE:
        for ds in datasets:
            ds.file_meta.TransferSyntaxUID = syntax
        return datasets
    if syntax in PYDICOM_ENCODED:
        for ds in datasets:
            # Lossless: the same instance, so the same SOP Instance UID (and the same bytes).
            ds.compress(syntax, generate_instance_uid=False)
        return datasets
    with tempfile.TemporaryDirectory(prefix="petray-synth-") as tmp:
        out: list[Dataset] = []
        for i, ds in enumerate(datasets):
            src = Path(tmp) / f"{i:05d}.dcm"
            dst = Path(tmp) / f"{i:05d}.jpg.dcm"
            ds.save_as(src, enforce_file_format=True)
            compress_with_dcmtk(src, dst, syntax=syntax)
            out.append(dcmread(dst))
        return out


def compress_with_dcmtk(path: Path, out: Path, *, syntax: str = JPEGLosslessSV1) -> Path:
    """Re-encode one file as JPEG Lossless with DCMTK's dcmcjpeg (pydicom 3.0 cannot encode it).

    ``+un`` keeps the SOP Instance UID: the compression is lossless, so it is the same instance.
    """
    if syntax not in DCMTK_ENCODED:
        raise ConfigurationError(f"dcmcjpeg makes JPEG Lossless only, not {syntax}")
    if shutil.which(DCMCJPEG) is None:
        raise ConfigurationError(f"{DCMCJPEG} not found: install the Debian package dcmtk")
    subprocess.run(
        [DCMCJPEG, "-q", DCMTK_ENCODED[syntax], "+un", str(path), str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def write_series(datasets: Sequence[Dataset], outdir: Path) -> list[Path]:
    """Write each dataset as ``{InstanceNumber:05d}_{SOPInstanceUID}.dcm``; never patient fields."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for ds in datasets:
        sop_uid = validate_uid(str(ds.SOPInstanceUID))
        path = outdir / f"{int(ds.InstanceNumber):05d}_{sop_uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _parse_drop(text: str) -> frozenset[int]:
    try:
        return frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigurationError(f"--drop must be comma-separated integers, not {text!r}") from None


def run_synth_command(args: argparse.Namespace) -> int:
    """``petray synth OUTDIR``: write one series and print where it went."""
    spec = SynthSpec(
        slices=args.slices,
        rows=args.rows,
        cols=args.cols,
        seed=args.seed,
        patient_id=args.patient_id,
        patient_name=args.patient_name,
        radiopharmaceutical=args.radiopharmaceutical,
        vendor=args.vendor,
        number_of_slices=not args.no_number_of_slices,
        drop=_parse_drop(args.drop),
        transfer_syntax=getattr(args, "transfer_syntax", None) or ExplicitVRLittleEndian,
        units=getattr(args, "units", "BQML"),
        decay_correction=getattr(args, "decay_correction", "START"),
        patient_weight=not getattr(args, "no_patient_weight", False),
    )
    paths = write_series(make_pet_series(spec), Path(args.outdir))
    print(f"wrote {len(paths)} instances to {args.outdir}")
    return 0

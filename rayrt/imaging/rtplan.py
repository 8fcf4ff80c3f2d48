"""DICOM RT Plan export and import for photon step-and-shoot plans.

Export (:func:`build_rtplan`, :func:`write_rtplan`, :func:`export_plan_dicom`)
-------------------------------------------------------------------------------
One RTPLAN per :class:`~rayrt.domain.plan.Plan` and :class:`~rayrt.domain.machine.MachineModel`:

* ``TreatmentMachineName`` = ``MachineModel.name``; nominal energy, SAD, dose rate from the model.
* Beam-limiting devices follow the machine: Varian-like machines (X and Y jaws) get
  ``ASYMX`` + ``ASYMY`` + ``MLCX``; Elekta-like machines without X jaws (``jaw_x is None``) get
  ``ASYMY`` + ``MLCX`` (the MLC defines the field in X); jawless machines get the MLC only
  (Halcyon: its two layers, below). The jaw device types come from ``JawModel.dicom_type``
  (``ASYMX``/``ASYMY`` or ``X``/``Y``).
  ``LeafPositionBoundaries`` are the machine's N+1 leaf-pair boundaries (mm at the isocenter).
* **Dual-layer MLCs (Halcyon)**: a machine with ``mlc.dual_layer`` gets two MLC devices instead
  of ``MLCX``: ``MLCX1`` = the *distal* layer (the model's ``leaf_boundaries_mm``, Halcyon 28 x
  10 mm, -140..140 mm; ``Segment.x1_mm``/``x2_mm``) and ``MLCX2`` = the *proximal* layer
  (``mlc.proximal_boundaries``, Halcyon 29 x 10 mm offset 5 mm, -145..145 mm;
  ``Segment.x1_proximal_mm``/``x2_proximal_mm``), each with its own ``NumberOfLeafJawPairs`` and
  ``LeafPositionBoundaries`` and its positions in every control point. This is the convention of
  Varian Halcyon RTPLANs as written by public QA-plan generators (e.g. Radformation's ``conjuror``
  Halcyon module: MLCX1 28 pairs from -140, MLCX2 29 pairs from -145) and read by other tools. A
  segment that does not position the proximal layer (``x1_proximal_mm`` None: the distal layer
  alone shapes the field) gets its proximal layer parked fully open (every pair at
  ``mlc.min_position_mm`` / ``mlc.max_position_mm``), which is the same fluence; such a parked
  layer reads back as None, so the round trip is exact (to the 0.01 mm written precision).
  Standard status: PS3.3's enumerated values for RT Beam Limiting Device Type (C.8.8.14, as
  known to dicom3tools 2022) are X, Y, ASYMX, ASYMY, MLCX, MLCY only, so ``dciodvfy`` reports
  MLCX1/MLCX2 as unrecognised enumerated values (its only complaint about these plans); rayrt
  writes them all the same because they are what dual-layer delivery systems read -- a single
  MLCX (the distal layer) would deliver field ends 5 mm wider than the planned dose.
* Step-and-shoot: each segment is a pair of control points with identical jaw and leaf positions,
  the cumulative meterset weight rising by the segment's share of the beam MU; every control point
  carries the full positions (allowed by the standard, and unambiguous for readers).
  ``FinalCumulativeMetersetWeight`` is 1. ``BeamType`` is ``STATIC`` for one segment, else
  ``DYNAMIC`` (the positions change between segments, with the beam off).
* ``FractionGroupSequence`` carries ``BeamMeterset`` = the beam's MU **per fraction** (Plan
  segment MU are per-fraction MU), ``NumberOfFractionsPlanned`` = ``Plan.fractions``.
* ``DoseReferenceSequence`` holds the prescription (``TargetPrescriptionDose`` = total Gy), a
  ``VOLUME`` reference to the target ROI when the RTSTRUCT names it, else a ``SITE``.
* With an RTSTRUCT the plan references it (``ReferencedStructureSetSequence``,
  ``RTPlanGeometry`` PATIENT) and shares its study, patient and frame of reference.

Import (:func:`read_rtplan`, :func:`match_machine`)
---------------------------------------------------
Static and step-and-shoot photon beams (Varian ASYMX/ASYMY/MLCX, Elekta MLCX/ASYMY, X/Y jaws,
Halcyon MLCX1/MLCX2) become a :class:`Plan` for the matched :class:`MachineModel` (by
``TreatmentMachineName``, else by leaf boundaries and jaw configuration). Two-layer plans on a
dual-layer model whose distal and proximal boundaries are the plan's two layers (identified by
their boundaries, whatever the order of MLCX1/MLCX2) keep both layers: the distal positions in
``x1_mm``/``x2_mm``, the proximal ones in ``x1_proximal_mm``/``x2_proximal_mm`` (None when the
proximal layer is parked fully open). Other two-layer plans (a single-layer model, or one whose
boundaries are the union of both layers) are combined onto the model's pairs: every leaf of
either layer that overlaps a model pair limits its opening (the intersection of the openings).
Single-layer plans (MLCX) import as before, also onto a dual-layer model (proximal layer None).
Dynamic MLC (sliding window) and arc (VMAT, conformal arc) beams are recognised and refused with a message that says
so: rayrt recomputes and converts step-and-shoot plans only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.imaging.dicom_io import damaged_input

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

    from rayrt.imaging.volume import Volume

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"

_POS_TOL_MM = 0.01  # leaf/jaw positions equal within this (DICOM DS rounding)
DISTAL_LAYER = "MLCX1"  # dual-layer MLC (Halcyon): the distal layer (nearer the patient), see the module docstring
PROXIMAL_LAYER = "MLCX2"  # the proximal layer (nearer the source), offset half a leaf
_W_TOL = 1e-7  # cumulative meterset weights equal within this


# ======================================================================================
# export
# ======================================================================================
def _ds(x: float, decimals: int = 4) -> str:
    """A DICOM decimal string (<= 16 characters)."""
    s = f"{float(x):.{decimals}f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    if len(s) > 16:
        s = f"{float(x):.9g}"
    return s


def _ds_list(values: Iterable[float], decimals: int = 4) -> list[str]:
    return [_ds(v, decimals) for v in values]


def _jaws_for_segment(
    seg: Segment, machine: MachineModel
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """(X1, X2), (Y1, Y2) jaw positions (mm) of one segment on ``machine``.

    The segment's own jaws are used when given; otherwise the jaws are set to the bounding box of
    the open leaf pairs (X: the outermost open leaf tips, Y: the boundaries of the outermost open
    pairs), clipped to the jaw travel. A pair is open when its gap exceeds the MLC's minimum gap
    (closed pairs are parked at the minimum gap). Machines without a jaw pair get None for it.
    """
    x1 = np.asarray(seg.x1_mm, dtype=float)
    x2 = np.asarray(seg.x2_mm, dtype=float)
    b = machine.mlc.boundaries
    open_ = x2 - x1 > machine.mlc.min_gap_mm + _POS_TOL_MM
    if open_.any():
        bx = (float(x1[open_].min()), float(x2[open_].max()))
        idx = np.nonzero(open_)[0]
        by = (float(b[idx[0]]), float(b[idx[-1] + 1]))
    else:  # a closed segment: a minimal field at the centre
        bx, by = (-1.0, 1.0), (-1.0, 1.0)
    jx = jy = None
    if machine.jaw_x is not None:
        jx = seg.jaw_x_mm or (max(bx[0], machine.jaw_x.min_mm), min(bx[1], machine.jaw_x.max_mm))
    if machine.jaw_y is not None:
        jy = seg.jaw_y_mm or (max(by[0], machine.jaw_y.min_mm), min(by[1], machine.jaw_y.max_mm))
    return jx, jy


def _device_types(machine: MachineModel) -> list[str]:
    types = []
    if machine.jaw_x is not None:
        types.append(machine.jaw_x.dicom_type or "ASYMX")
    if machine.jaw_y is not None:
        types.append(machine.jaw_y.dicom_type or "ASYMY")
    if machine.mlc.dual_layer:
        types += [DISTAL_LAYER, PROXIMAL_LAYER]
    else:
        types.append(machine.mlc.dicom_type or "MLCX")
    return types


def _mlc_boundaries(t: str, machine: MachineModel) -> np.ndarray:
    """Leaf-pair boundaries (mm) of the MLC device ``t`` of ``machine`` (the proximal layer for MLCX2 of
    a dual-layer MLC)."""
    proximal = machine.mlc.proximal_boundaries  # None unless the MLC is dual-layer
    if proximal is not None and t == PROXIMAL_LAYER:
        return proximal
    return machine.mlc.boundaries


def _proximal_positions(seg: Segment, machine: MachineModel) -> list[float]:
    """Proximal-layer leaf positions (bank A then bank B) of a dual-layer segment; parked fully open
    (``min_position_mm`` / ``max_position_mm``) when the segment does not position that layer."""
    proximal = machine.mlc.proximal_boundaries
    if proximal is None:
        raise InputError(
            f"machine {machine.name!r} has a single-layer MLC: it has no proximal leaf positions", kind="rtplan"
        )
    n = proximal.size - 1
    x1, x2 = seg.x1_proximal_mm, seg.x2_proximal_mm  # both or neither (Segment validates)
    if x1 is None or x2 is None:
        return [float(machine.mlc.min_position_mm)] * n + [float(machine.mlc.max_position_mm)] * n
    return list(x1) + list(x2)


@dataclass
class StructureSetRef:
    """What an RTPLAN needs from the RTSTRUCT it references."""

    sop_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    patient_id: str = ""
    patient_name: str = ""
    roi_numbers: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, ds: "Dataset") -> "StructureSetRef":
        if str(getattr(ds, "Modality", "")).upper() != "RTSTRUCT":
            raise InputError(
                f"expected an RTSTRUCT to reference, got Modality {getattr(ds, 'Modality', '?')}", kind="rtplan"
            )
        rois = {str(r.ROIName): int(r.ROINumber) for r in getattr(ds, "StructureSetROISequence", [])}
        for_uid = str(getattr(ds, "FrameOfReferenceUID", "") or "")
        if not for_uid:
            refs = getattr(ds, "ReferencedFrameOfReferenceSequence", [])
            for_uid = str(refs[0].FrameOfReferenceUID) if refs else ""
        return cls(
            str(ds.SOPInstanceUID),
            str(ds.StudyInstanceUID),
            for_uid,
            str(getattr(ds, "PatientID", "")),
            str(getattr(ds, "PatientName", "")),
            rois,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "StructureSetRef":
        from rayrt.imaging.dicom_io import read_dicom

        try:
            ds = read_dicom(path, stop_before_pixels=True)
        except InputError as exc:
            raise InputError(f"cannot read RTSTRUCT: {exc.message}", kind="rtplan", field=str(path)) from None
        return cls.from_dataset(ds)


def build_rtplan(
    plan: Plan,
    machine: MachineModel,
    *,
    structure_set: StructureSetRef | str | Path | None = None,
    patient_id: str | None = None,
    patient_name: str = "",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_uid: str | None = None,
    patient_position: str = "HFS",
) -> "Dataset":
    """The RTPLAN dataset of ``plan`` delivered on ``machine`` (see the module docstring)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSeq
    from pydicom.uid import generate_uid

    from rayrt.imaging.export import _new_dataset, _now, _patient_study

    if plan.machine and plan.machine != machine.name:
        raise InputError(f"plan {plan.id} is for machine '{plan.machine}', not '{machine.name}'", kind="rtplan")
    if not plan.beams:
        raise InputError(f"plan {plan.id} has no beams to export", kind="rtplan")
    n_pairs = machine.mlc.num_pairs
    for b in plan.beams:
        if not b.segments:
            raise InputError(f"beam '{b.name or b.number}' has no segments to export", kind="rtplan")
        for s in b.segments:
            if len(s.x1_mm) != n_pairs:
                raise InputError(
                    f"beam '{b.name or b.number}' has {len(s.x1_mm)} leaf pairs, machine {machine.name} has {n_pairs}",
                    kind="rtplan",
                )
            if s.x1_proximal_mm is not None:
                pb = machine.mlc.proximal_boundaries
                if pb is None:
                    raise InputError(
                        f"beam '{b.name or b.number}' positions a proximal MLC layer but machine {machine.name}'s MLC "
                        "has one layer; export it for a dual-layer machine or drop x1_proximal_mm/x2_proximal_mm",
                        kind="rtplan",
                    )
                if len(s.x1_proximal_mm) != pb.size - 1:
                    raise InputError(
                        f"beam '{b.name or b.number}' has {len(s.x1_proximal_mm)} proximal leaf pairs, machine "
                        f"{machine.name}'s proximal layer has {pb.size - 1}",
                        kind="rtplan",
                    )
        if b.mu <= 0:
            raise InputError(f"beam '{b.name or b.number}' has no monitor units", kind="rtplan")

    ssref = StructureSetRef.from_file(structure_set) if isinstance(structure_set, (str, Path)) else structure_set
    date, time = _now()
    sop_uid = sop_instance_uid or generate_uid()
    ds = _new_dataset(RT_PLAN_STORAGE, sop_uid)
    study_uid = study_uid or (ssref.study_instance_uid if ssref else None) or generate_uid()
    for_uid = (
        frame_of_reference_uid
        or plan.frame_of_reference_uid
        or (ssref.frame_of_reference_uid if ssref else None)
        or generate_uid()
    )
    if ssref and ssref.frame_of_reference_uid and for_uid != ssref.frame_of_reference_uid:
        raise InputError(
            "the plan's frame of reference differs from the RTSTRUCT's; export them on one frame of reference",
            kind="rtplan",
        )
    _patient_study(
        ds,
        patient_id=patient_id or plan.patient_id or (ssref.patient_id if ssref else ""),
        patient_name=patient_name or (ssref.patient_name if ssref else "") or "Anonymous^",
        study_uid=study_uid,
        date=date,
        time=time,
    )
    ds.Modality = "RTPLAN"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 4
    ds.SeriesDescription = f"rayrt plan {machine.name}"[:64]
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.RTPlanLabel = (plan.label or "rayrt")[:16]
    ds.RTPlanName = f"{plan.label or 'rayrt'} {machine.name}"[:64]
    ds.RTPlanDescription = f"rayrt plan {plan.id} for {machine.name}" + (
        f" (converted from {plan.source_plan_id})" if plan.source_plan_id else ""
    )
    ds.RTPlanDate = date
    ds.RTPlanTime = time
    ds.ApprovalStatus = "UNAPPROVED"
    if ssref is not None:
        ds.RTPlanGeometry = "PATIENT"
        item = Dataset()
        item.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        item.ReferencedSOPInstanceUID = ssref.sop_instance_uid
        ds.ReferencedStructureSetSequence = DSeq([item])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"

    # ---- prescription
    dref_number = 1
    if plan.prescription_gy is not None:
        dr = Dataset()
        dr.DoseReferenceNumber = dref_number
        dr.DoseReferenceUID = generate_uid()
        roi = ssref.roi_numbers.get(plan.target) if (ssref and plan.target) else None
        if roi is not None:
            dr.DoseReferenceStructureType = "VOLUME"
            dr.ReferencedROINumber = roi
        else:
            dr.DoseReferenceStructureType = "SITE"
        dr.DoseReferenceDescription = (plan.target or "prescription")[:64]
        dr.DoseReferenceType = "TARGET"
        dr.TargetPrescriptionDose = _ds(plan.prescription_gy, 4)
        ds.DoseReferenceSequence = DSeq([dr])

    # ---- fraction group
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = int(plan.fractions)
    fg.NumberOfBeams = len(plan.beams)
    fg.NumberOfBrachyApplicationSetups = 0
    refs = []
    for b in plan.beams:
        rb = Dataset()
        rb.ReferencedBeamNumber = int(b.number)
        rb.BeamMeterset = _ds(b.mu, 4)
        refs.append(rb)
    fg.ReferencedBeamSequence = DSeq(refs)
    ds.FractionGroupSequence = DSeq([fg])

    # ---- patient setup
    ps = Dataset()
    ps.PatientSetupNumber = 1
    ps.PatientPosition = patient_position
    ps.SetupTechnique = "ISOCENTRIC"
    ds.PatientSetupSequence = DSeq([ps])

    # ---- beams
    types = _device_types(machine)
    energy = _ds(machine.nominal_energy_mv, 2)
    beams = []
    for b in plan.beams:
        beams.append(_beam_item(b, machine, types, energy))
    ds.BeamSequence = DSeq(beams)
    return ds


def _beam_item(b: Beam, machine: MachineModel, types: list[str], energy: str) -> "Dataset":
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSeq

    it = Dataset()
    it.BeamNumber = int(b.number)
    it.BeamName = (b.name or f"B{b.number}")[:64]
    it.BeamDescription = f"gantry {b.gantry_deg:g} deg, {len(b.segments)} segment(s)"
    it.BeamType = "STATIC" if len(b.segments) == 1 else "DYNAMIC"
    it.RadiationType = machine.radiation_type or "PHOTON"
    it.TreatmentMachineName = machine.name[:16]
    if machine.vendor:
        it.Manufacturer = machine.vendor[:64]
    if machine.model:
        it.ManufacturerModelName = machine.model[:64]
    it.PrimaryDosimeterUnit = "MU"
    it.SourceAxisDistance = _ds(machine.sad_mm, 2)
    devs = []
    for t in types:
        d = Dataset()
        d.RTBeamLimitingDeviceType = t
        if t.startswith("MLC"):
            bounds = _mlc_boundaries(t, machine)
            d.NumberOfLeafJawPairs = int(bounds.size - 1)
            d.LeafPositionBoundaries = _ds_list(bounds, 3)
        else:
            d.NumberOfLeafJawPairs = 1
        devs.append(d)
    it.BeamLimitingDeviceSequence = DSeq(devs)
    it.TreatmentDeliveryType = "TREATMENT"
    it.NumberOfWedges = 0
    it.NumberOfCompensators = 0
    it.NumberOfBoli = 0
    it.NumberOfBlocks = 0
    it.ReferencedPatientSetupNumber = 1
    if machine.fff:
        fm = Dataset()
        fm.FluenceModeID = "FFF"
        fm.FluenceMode = "NON_STANDARD"
        it.PrimaryFluenceModeSequence = DSeq([fm])

    total = b.mu
    cps: list[Dataset] = []
    cum = 0.0
    gantry, coll, couch = (a % 360.0 for a in (b.gantry_deg, b.collimator_deg, b.couch_deg))
    for s_idx, seg in enumerate(b.segments):
        jx, jy = _jaws_for_segment(seg, machine)
        w_start = cum
        cum += seg.mu / total
        w_end = 1.0 if s_idx == len(b.segments) - 1 else cum
        for w in (w_start, w_end):
            cp = Dataset()
            cp.ControlPointIndex = len(cps)
            pos = []
            for t in types:
                p = Dataset()
                p.RTBeamLimitingDeviceType = t
                if t == PROXIMAL_LAYER and machine.mlc.dual_layer:
                    p.LeafJawPositions = _ds_list(_proximal_positions(seg, machine), 2)
                elif t.startswith("MLC"):
                    p.LeafJawPositions = _ds_list(list(seg.x1_mm) + list(seg.x2_mm), 2)
                elif t in ("ASYMX", "X") and jx is not None:  # jx (jy) is None only without X (Y) jaws
                    p.LeafJawPositions = _ds_list(jx, 2)
                elif jy is not None:
                    p.LeafJawPositions = _ds_list(jy, 2)
                pos.append(p)
            cp.BeamLimitingDevicePositionSequence = DSeq(pos)
            if not cps:  # the first control point carries the full machine state
                cp.NominalBeamEnergy = energy
                cp.DoseRateSet = _ds(machine.limits.dose_rate_mu_min, 1)
                cp.GantryAngle = _ds(gantry, 2)
                cp.GantryRotationDirection = "NONE"
                cp.BeamLimitingDeviceAngle = _ds(coll, 2)
                cp.BeamLimitingDeviceRotationDirection = "NONE"
                cp.PatientSupportAngle = _ds(couch, 2)
                cp.PatientSupportRotationDirection = "NONE"
                cp.TableTopEccentricAngle = "0"
                cp.TableTopEccentricRotationDirection = "NONE"
                cp.TableTopVerticalPosition = None
                cp.TableTopLongitudinalPosition = None
                cp.TableTopLateralPosition = None
                cp.IsocenterPosition = _ds_list(b.isocenter_mm, 2)
            cp.CumulativeMetersetWeight = _ds(w, 8)
            cps.append(cp)
    it.NumberOfControlPoints = len(cps)
    it.FinalCumulativeMetersetWeight = "1"
    it.ControlPointSequence = DSeq(cps)
    return it


def write_rtplan(plan: Plan, machine: MachineModel, path: str | Path, **kwargs) -> Path:
    """Write :func:`build_rtplan` to ``path`` (Explicit VR Little Endian); returns the path."""
    from rayrt.imaging.export import save_dataset

    return save_dataset(build_rtplan(plan, machine, **kwargs), Path(path))


def export_plan_dicom(
    plan: Plan,
    machine: MachineModel,
    out_dir: str | Path,
    *,
    dose: "Volume | None" = None,
    rtstruct: str | Path | None = None,
    patient_id: str | None = None,
    patient_name: str = "",
    study_uid: str | None = None,
    dose_bits: int = 32,
) -> dict[str, Path]:
    """Write ``RP_<machine>.dcm`` and, with ``dose``, ``RD_<machine>.dcm`` referencing it.

    ``rtstruct`` (an RTSTRUCT written by :func:`rayrt.imaging.export.write_rtstruct` or imported)
    is referenced by the plan, which takes its patient, study and frame of reference. The dose is
    written by :func:`rayrt.imaging.export.write_rtdose` (``dose_bits`` 16 or 32). Returns the
    paths by kind (``rtplan``, ``rtdose``).
    """
    from rayrt.imaging.export import write_rtdose

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ssref = StructureSetRef.from_file(rtstruct) if rtstruct is not None else None
    ds = build_rtplan(
        plan, machine, structure_set=ssref, patient_id=patient_id, patient_name=patient_name, study_uid=study_uid
    )
    from rayrt.imaging.arrays import safe_name
    from rayrt.imaging.export import save_dataset

    safe = safe_name(machine.name)
    out = {"rtplan": save_dataset(ds, out_dir / f"RP_{safe}.dcm")}
    if dose is not None:
        out["rtdose"] = write_rtdose(
            dose,
            out_dir / f"RD_{safe}.dcm",
            frame_of_reference_uid=str(ds.FrameOfReferenceUID),
            study_uid=str(ds.StudyInstanceUID),
            patient_id=str(ds.PatientID),
            patient_name=str(ds.PatientName),
            referenced_plan_uid=str(ds.SOPInstanceUID),
            bits=dose_bits,
        )
    return out


# ======================================================================================
# import
# ======================================================================================
def _floats(v) -> np.ndarray:
    if v is None:
        return np.zeros(0)
    if isinstance(v, (int, float, str)) or not hasattr(v, "__len__"):
        return np.asarray([float(v)])
    return np.asarray([float(x) for x in v], dtype=float)


def _plan_mlc_layers(ds: "Dataset") -> dict[str, np.ndarray]:
    """Leaf boundaries of each MLC layer of the first beam that has one (MLCX, or MLCX1 + MLCX2)."""
    for beam in getattr(ds, "BeamSequence", []):
        layers = {}
        for d in getattr(beam, "BeamLimitingDeviceSequence", []):
            t = str(d.RTBeamLimitingDeviceType).upper()
            if t.startswith("MLC") and "LeafPositionBoundaries" in d:
                layers[t] = _floats(d.LeafPositionBoundaries)
        if layers:
            return layers
    return {}


def _layers_fit(layers: dict[str, np.ndarray], boundaries: np.ndarray, tol: float = 0.05) -> bool:
    """Whether a model's leaf boundaries are the plan's MLC: its only layer, one of its layers, or their union."""
    if not layers:
        return True
    cands = list(layers.values())
    if len(layers) > 1:
        cands.append(np.unique(np.concatenate(cands)))
    return any(c.size == boundaries.size and bool(np.allclose(c, boundaries, atol=tol)) for c in cands)


def _describe_layers(layers: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{t} {b.size - 1} pairs {b[0]:g}..{b[-1]:g} mm" for t, b in sorted(layers.items()))


def _plan_has_x_jaws(ds: "Dataset") -> bool:
    for beam in getattr(ds, "BeamSequence", []):
        for d in getattr(beam, "BeamLimitingDeviceSequence", []):
            if str(d.RTBeamLimitingDeviceType).upper() in ("ASYMX", "X"):
                return True
    return False


def _machine_name(ds: "Dataset") -> str:
    for beam in getattr(ds, "BeamSequence", []):
        name = str(getattr(beam, "TreatmentMachineName", "") or "").strip()
        if name:
            return name
    return ""


def match_machine(ds: "Dataset", machines: Sequence[MachineModel] | dict[str, MachineModel]) -> MachineModel:
    """The machine model an RTPLAN was made for.

    First by ``TreatmentMachineName`` (case-insensitive; the model's leaf geometry must then
    agree with the plan's, else the plan is refused); otherwise by the MLC leaf boundaries
    (within 0.05 mm), preferring a model with the same X-jaw configuration, then the same
    nominal energy. Raises :class:`InputError` naming the plan's machine when none fits.
    """
    models = list(machines.values()) if isinstance(machines, dict) else list(machines)
    if not models:
        raise InputError("no machine models to match the RTPLAN against; load configs/machines first", kind="rtplan")
    name = _machine_name(ds)
    layers = _plan_mlc_layers(ds)

    def geometry_fits(m: MachineModel) -> bool:
        return _layers_fit(layers, m.mlc.boundaries)

    # TreatmentMachineName is an SH (at most 16 characters): longer model names were cut on export
    by_name = [m for m in models if m.name.strip().lower()[:16] == name.lower()[:16]] if name else []
    if by_name:
        m = by_name[0]
        if not geometry_fits(m):
            raise InputError(
                f"RTPLAN machine '{name}' matches model {m.name} by name "
                f"but its MLC ({_describe_layers(layers)}) differs from the model's {m.mlc.num_pairs} pairs "
                f"{m.mlc.leaf_boundaries_mm[0]:g}..{m.mlc.leaf_boundaries_mm[-1]:g} mm; "
                "fix the machine file or the plan",
                kind="rtplan",
                status=422,
            )
        return m
    if not layers:
        raise InputError(
            f"RTPLAN machine '{name or '?'}' is not a known model and the plan has no MLC to match by; known: "
            f"{', '.join(m.name for m in models)}",
            kind="rtplan",
            status=422,
        )
    cands = [m for m in models if geometry_fits(m)]
    if not cands:
        raise InputError(
            f"no machine model matches RTPLAN machine '{name or '?'}' ({_describe_layers(layers)}); "
            f"known: {', '.join(f'{m.name} ({m.mlc.num_pairs} pairs)' for m in models)}",
            kind="rtplan",
            status=422,
        )
    has_x = _plan_has_x_jaws(ds)
    energy = None
    try:
        energy = float(ds.BeamSequence[0].ControlPointSequence[0].NominalBeamEnergy)
    except Exception:
        pass

    def rank(m: MachineModel) -> tuple:
        return (
            (m.jaw_x is not None) != has_x,
            energy is not None and abs(m.nominal_energy_mv - energy) > 0.01,
            m.standard,
        )

    return sorted(cands, key=rank)[0]


@dataclass
class ImportedPlan:
    """An RTPLAN read into rayrt: the plan, its machine model and what was noticed on the way."""

    plan: Plan
    machine: MachineModel
    technique: str  # "static" or "step_and_shoot"
    sop_instance_uid: str = ""
    warnings: list[str] = field(default_factory=list)


def _effective_leaves(
    layers: dict[str, tuple[np.ndarray, np.ndarray]],
    bounds: dict[str, np.ndarray],
    target: np.ndarray,
    tol: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Leaf tips on the ``target`` pairs from one or two MLC layers.

    Every leaf of every layer that overlaps a target pair (by more than ``tol``) limits its
    opening: x1 = the largest x1, x2 = the smallest x2 among them (the intersection of the
    openings; conservative where a target pair spans leaves of different openings, e.g. a
    Halcyon proximal layer offset by half a leaf under a 10 mm distal pair).
    """
    lo_t, hi_t = target[:-1], target[1:]
    x1 = np.full(lo_t.size, -np.inf)
    x2 = np.full(lo_t.size, np.inf)
    for t, (a, b) in layers.items():
        bb = bounds[t]
        overlap = (
            np.minimum(hi_t[:, None], bb[None, 1:]) - np.maximum(lo_t[:, None], bb[None, :-1])
        ) > tol  # (target, layer)
        x1 = np.maximum(x1, np.where(overlap, a[None, :], -np.inf).max(axis=1))
        x2 = np.minimum(x2, np.where(overlap, b[None, :], np.inf).min(axis=1))
    x1 = np.where(np.isfinite(x1), x1, 0.0)
    x2 = np.where(np.isfinite(x2), x2, 0.0)
    x2 = np.maximum(x2, x1)  # crossing layers = closed
    return x1, x2


@damaged_input("the RTPLAN", "rtplan")
def read_rtplan(
    source: "str | Path | Dataset", machines: Sequence[MachineModel] | dict[str, MachineModel]
) -> ImportedPlan:
    """Read a photon RTPLAN (static / step-and-shoot) into a :class:`Plan` for the matched machine.

    Segment MU = BeamMeterset × (weight increase of the control-point pair) / final weight.
    Control points carry forward the positions and angles they omit (DICOM rule). Refused with
    :class:`InputError`: non-photon beams, arcs (gantry moving while the beam is on: VMAT,
    conformal arcs), dynamic MLC (leaves moving while the beam is on: sliding window), plans
    without a fraction group meterset.
    """
    from rayrt.imaging.dicom_io import read_dicom

    ds: Dataset
    if isinstance(source, (str, Path)):
        try:
            ds = read_dicom(source)  # a Part 10 file or a raw dataset (some planning systems export those)
        except InputError as exc:
            raise InputError(f"cannot read RTPLAN: {exc.message}", kind="rtplan", field=str(source)) from None
    else:
        ds = source
    if str(getattr(ds, "Modality", "")).upper() != "RTPLAN":
        raise InputError(f"not an RTPLAN (Modality {getattr(ds, 'Modality', '?')})", kind="rtplan")
    if "BeamSequence" not in ds or not ds.BeamSequence:
        raise InputError("the RTPLAN has no BeamSequence (brachytherapy or ion plans are not supported)", kind="rtplan")
    machine = match_machine(ds, machines)
    warnings: list[str] = []

    # ---- MU per beam from the (first) fraction group
    meterset: dict[int, float] = {}
    fractions = 1
    fgs = getattr(ds, "FractionGroupSequence", [])
    if fgs:
        fg = fgs[0]
        if len(fgs) > 1:
            warnings.append(f"{len(fgs)} fraction groups; only fraction group {fg.FractionGroupNumber} imported")
        fractions = int(getattr(fg, "NumberOfFractionsPlanned", 1) or 1)
        for rb in getattr(fg, "ReferencedBeamSequence", []):
            if "BeamMeterset" in rb and rb.BeamMeterset not in (None, ""):
                meterset[int(rb.ReferencedBeamNumber)] = float(rb.BeamMeterset)

    prescription = None
    target = None
    for dr in getattr(ds, "DoseReferenceSequence", []):
        if str(getattr(dr, "DoseReferenceType", "")).upper() == "TARGET" and "TargetPrescriptionDose" in dr:
            prescription = float(dr.TargetPrescriptionDose)
            target = str(getattr(dr, "DoseReferenceDescription", "") or "") or None
            break

    target_bounds = machine.mlc.boundaries
    beams: list[Beam] = []
    techniques = set()
    for bi in ds.BeamSequence:
        bnum = int(bi.BeamNumber)
        bname = str(getattr(bi, "BeamName", "") or f"B{bnum}")
        if str(getattr(bi, "TreatmentDeliveryType", "TREATMENT")).upper() not in ("TREATMENT", ""):
            warnings.append(f"beam '{bname}' is a {bi.TreatmentDeliveryType} beam; skipped")
            continue
        rtype = str(getattr(bi, "RadiationType", "PHOTON")).upper()
        if rtype != "PHOTON":
            raise InputError(
                f"beam '{bname}' is a {rtype} beam; rayrt imports photon plans only", kind="rtplan", status=422
            )
        if bnum not in meterset:
            raise InputError(
                f"beam '{bname}' has no BeamMeterset in the fraction group; cannot derive MU", kind="rtplan", status=422
            )
        if int(getattr(bi, "NumberOfWedges", 0) or 0) > 0:
            warnings.append(f"beam '{bname}' has a wedge, which rayrt does not model; ignored")
        final_w = float(getattr(bi, "FinalCumulativeMetersetWeight", 1.0) or 1.0)
        mu_total = meterset[bnum]
        bounds: dict[str, np.ndarray] = {}
        for d in getattr(bi, "BeamLimitingDeviceSequence", []):
            t = str(d.RTBeamLimitingDeviceType).upper()
            if t.startswith("MLC"):
                if t == "MLCY":
                    raise InputError(
                        f"beam '{bname}': MLCY (leaves moving along Y) is not supported", kind="rtplan", status=422
                    )
                bounds[t] = _floats(d.LeafPositionBoundaries)
        # walk the control points
        state: dict[str, np.ndarray] = {}
        angles = {"gantry": 0.0, "coll": 0.0, "couch": 0.0}
        iso = (0.0, 0.0, 0.0)
        prev_w = None
        prev_state: dict[str, np.ndarray] | None = None
        prev_gantry = None
        segments: list[Segment] = []
        first = True
        for cp in bi.ControlPointSequence:
            for p in getattr(cp, "BeamLimitingDevicePositionSequence", []):
                state[str(p.RTBeamLimitingDeviceType).upper()] = _floats(p.LeafJawPositions)
            if "GantryAngle" in cp:
                angles["gantry"] = float(cp.GantryAngle)
            if "BeamLimitingDeviceAngle" in cp:
                angles["coll"] = float(cp.BeamLimitingDeviceAngle)
            if "PatientSupportAngle" in cp:
                angles["couch"] = float(cp.PatientSupportAngle)
            if "IsocenterPosition" in cp:
                iso_values = _floats(cp.IsocenterPosition)
                if iso_values.size != 3:
                    raise InputError(
                        f"beam '{bname}': IsocenterPosition has {iso_values.size} values, not 3 (x, y, z mm)",
                        kind="rtplan",
                    )
                iso = (float(iso_values[0]), float(iso_values[1]), float(iso_values[2]))
            if first:
                rot = str(getattr(cp, "GantryRotationDirection", "NONE") or "NONE").upper()
                if rot in ("CW", "CC"):
                    raise InputError(
                        f"beam '{bname}' is an arc (GantryRotationDirection {rot}: VMAT or conformal arc); "
                        "rayrt imports static and step-and-shoot beams only",
                        kind="rtplan",
                        status=422,
                    )
                b_angles = dict(angles)
                first = False
            w = (
                float(cp.CumulativeMetersetWeight)
                if "CumulativeMetersetWeight" in cp and cp.CumulativeMetersetWeight not in (None, "")
                else prev_w
            )
            if w is None:
                raise InputError(
                    f"beam '{bname}': control point {cp.ControlPointIndex} has no CumulativeMetersetWeight",
                    kind="rtplan",
                )
            # prev_w, prev_state and prev_gantry are set together, from the second control point on
            if prev_w is not None and prev_state is not None and prev_gantry is not None and w - prev_w > _W_TOL:
                if abs(angles["gantry"] - prev_gantry) > 1e-3:
                    raise InputError(
                        f"beam '{bname}' rotates the gantry while irradiating (VMAT/arc); rayrt imports static and "
                        "step-and-shoot beams only",
                        kind="rtplan",
                        status=422,
                    )
                moved = [
                    t
                    for t in state
                    if t in prev_state
                    and (state[t].shape != prev_state[t].shape or np.abs(state[t] - prev_state[t]).max() > _POS_TOL_MM)
                ]
                if moved:
                    raise InputError(
                        f"beam '{bname}' moves {', '.join(moved)} while irradiating (dynamic MLC / sliding window); "
                        "rayrt imports static and step-and-shoot beams only",
                        kind="rtplan",
                        status=422,
                    )
                segments.append(
                    _segment_from_state(
                        prev_state, bounds, target_bounds, machine, mu_total * (w - prev_w) / final_w, bname
                    )
                )
            prev_w, prev_state, prev_gantry = w, {k: v.copy() for k, v in state.items()}, angles["gantry"]
        if not segments:
            warnings.append(f"beam '{bname}' delivers no meterset; skipped")
            continue
        techniques.add("static" if len(segments) == 1 else "step_and_shoot")
        beams.append(
            Beam(
                name=bname,
                number=bnum,
                gantry_deg=b_angles["gantry"],
                collimator_deg=b_angles["coll"],
                couch_deg=b_angles["couch"],
                isocenter_mm=iso,
                segments=segments,
            )
        )
    if not beams:
        raise InputError("the RTPLAN has no treatment beam with meterset", kind="rtplan", status=422)
    plan = Plan(
        label=str(getattr(ds, "RTPlanLabel", "") or "imported"),
        machine=machine.name,
        patient_id=str(getattr(ds, "PatientID", "") or ""),
        frame_of_reference_uid=str(getattr(ds, "FrameOfReferenceUID", "") or "") or None,
        fractions=max(1, fractions),
        prescription_gy=prescription,
        target=target,
        beams=beams,
        notes=[f"imported from RTPLAN {getattr(ds, 'SOPInstanceUID', '')}"] + warnings,
    )
    tech = "step_and_shoot" if "step_and_shoot" in techniques else "static"
    return ImportedPlan(
        plan=plan,
        machine=machine,
        technique=tech,
        sop_instance_uid=str(getattr(ds, "SOPInstanceUID", "")),
        warnings=warnings,
    )


def _dual_layers(bounds: dict[str, np.ndarray], machine: MachineModel, tol: float = 0.05) -> tuple[str, str] | None:
    """(distal, proximal) device types of a two-layer plan whose layers are exactly ``machine``'s
    distal and proximal leaf boundaries (identified by the boundaries, not the MLCX1/MLCX2 order); else None."""
    pb = machine.mlc.proximal_boundaries
    if pb is None or len(bounds) != 2:
        return None

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return a.size == b.size and bool(np.allclose(a, b, atol=tol))

    t1, t2 = sorted(bounds)
    for d, p in ((t1, t2), (t2, t1)):
        if same(bounds[d], machine.mlc.boundaries) and same(bounds[p], pb):
            return d, p
    return None


def _segment_from_state(
    state: dict[str, np.ndarray],
    bounds: dict[str, np.ndarray],
    target: np.ndarray,
    machine: MachineModel,
    mu: float,
    bname: str,
) -> Segment:
    layers = {}
    for t, b in bounds.items():
        if t not in state:
            raise InputError(f"beam '{bname}': no leaf positions for {t}", kind="rtplan")
        pos = state[t]
        n = b.size - 1
        if pos.size != 2 * n:
            raise InputError(f"beam '{bname}': {t} has {pos.size} leaf positions for {n} pairs", kind="rtplan")
        layers[t] = (pos[:n], pos[n:])
    proximal = None
    dual = _dual_layers(bounds, machine) if layers else None
    if dual is not None:  # both layers of the model's dual-layer MLC: kept as they are
        x1, x2 = (v.copy() for v in layers[dual[0]])
        p1, p2 = layers[dual[1]]
        parked_open = bool(
            np.all(p1 <= machine.mlc.min_position_mm + _POS_TOL_MM)
            and np.all(p2 >= machine.mlc.max_position_mm - _POS_TOL_MM)
        )
        if not parked_open:
            proximal = (p1.tolist(), p2.tolist())
    elif layers:
        x1, x2 = _effective_leaves(layers, bounds, target)
    else:  # jaws only (open field): leaves at the jaws
        x1 = np.full(machine.mlc.num_pairs, -50.0)
        x2 = np.full(machine.mlc.num_pairs, 50.0)
    jx = jy = None
    for t, v in state.items():
        if t in ("ASYMX", "X") and v.size == 2:
            jx = (float(v[0]), float(v[1]))
        elif t in ("ASYMY", "Y") and v.size == 2:
            jy = (float(v[0]), float(v[1]))
    if not layers:
        if jx is not None:
            x1[:], x2[:] = jx
        if jy is not None:
            c = machine.mlc.leaf_centers_mm
            closed = (c < jy[0]) | (c > jy[1])
            x1[closed] = x2[closed] = 0.5 * (x1[closed] + x2[closed])
    return Segment(
        x1_mm=x1.tolist(),
        x2_mm=x2.tolist(),
        jaw_x_mm=jx if machine.jaw_x is not None else None,
        jaw_y_mm=jy if machine.jaw_y is not None else None,
        mu=max(0.0, float(mu)),
        x1_proximal_mm=proximal[0] if proximal else None,
        x2_proximal_mm=proximal[1] if proximal else None,
    )

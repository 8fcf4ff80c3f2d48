"""Files of ``rayrt plan ... --machines a,b,c``: one folder per machine, DICOM RT + QA.

:func:`write_conversion_outputs` writes

    OUT/standard/            rtplan.dcm, rtdose.dcm, rtstruct.dcm, qa.json (+ qa.png)  -- the standard plan
    OUT/<machine>/           rtplan.dcm, rtdose.dcm, rtstruct.dcm, qa.json (+ qa.png)  -- each released plan
    OUT/<machine>/           qa.json (+ qa.png), NOT_RELEASED.txt                      -- a failed conversion:
                             no rtplan / rtdose is ever written for it
    OUT/conversion.json      coincidence, attempts and status of every machine
    OUT/ct/                  the CT series, only when the study has no DICOM CT to reference

All plans reference the same RT Structure Set (written once, copied into each folder), which
references the CT series; RT Dose files reference their plan. Doses are course doses (Gy).
Dual-layer MLC plans (Halcyon) carry both layers in rtplan.dcm (MLCX1 distal, MLCX2 proximal;
:mod:`rayrt.imaging.rtplan`), so the RTPLAN's field is the one rtdose.dcm was computed for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.imaging.volume import Volume

__all__ = ["write_conversion_outputs", "write_plan_folder", "convert_and_write"]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "machine"


def _structure_set(study, out_dir: Path) -> Path:
    """RTSTRUCT of the study's structures referencing its CT (the CT written to OUT/ct/ when it has no DICOM reference)."""
    from rayrt.imaging.export import write_ct_series, write_rtstruct

    primary = study.primary
    ref = primary
    if not primary.meta.get("sop_instance_uids"):
        ref = Volume(primary.array, primary.grid, primary.quantity or "HU", {})
        write_ct_series(ref, out_dir / "ct", patient_id=study.patient_id or "anonymous", patient_name=study.patient_name or "",
                        study_uid=study.study_instance_uid, frame_of_reference_uid=study.frame_of_reference_uid)
    contours = None
    if study.patient_id == "TG119":
        try:
            from rayrt.imaging.phantoms import tg119_contours

            contours = tg119_contours(primary.grid)
        except Exception:  # noqa: BLE001 - traced contours are the fallback
            contours = None
    return write_rtstruct(study.structures, ref, out_dir / "rtstruct.dcm", contours=contours)


def write_plan_folder(folder: Path, plan, machine: MachineModel, dose: Volume, rtstruct: Path, qa_result=None, *, png: bool = True) -> dict:
    """rtplan.dcm + rtdose.dcm (+ rtstruct.dcm copy, qa.json, qa.png) for one plan."""
    from rayrt.imaging.export import write_rtdose
    from rayrt.imaging.rtplan import StructureSetRef, build_rtplan

    folder.mkdir(parents=True, exist_ok=True)
    rs = folder / "rtstruct.dcm"
    if rtstruct.resolve() != rs.resolve():
        shutil.copyfile(rtstruct, rs)
    ds = build_rtplan(plan, machine, structure_set=StructureSetRef.from_file(rs))
    ds.save_as(folder / "rtplan.dcm", enforce_file_format=True)
    write_rtdose(dose, folder / "rtdose.dcm", frame_of_reference_uid=str(ds.FrameOfReferenceUID), study_uid=str(ds.StudyInstanceUID),
                 patient_id=str(ds.PatientID), patient_name=str(ds.PatientName), referenced_plan_uid=str(ds.SOPInstanceUID))
    out = {"rtplan": str(folder / "rtplan.dcm"), "rtdose": str(folder / "rtdose.dcm"), "rtstruct": str(rs)}
    for stale in ("segments_dual_layer.json", "DUAL_LAYER.txt"):  # side files of earlier versions (proximal layer beside the RTPLAN)
        (folder / stale).unlink(missing_ok=True)
    if qa_result is not None:
        out.update(_write_qa(folder, qa_result, png))
    return out


def _write_qa(folder: Path, qa_result, png: bool) -> dict:
    from rayrt.qa.report import write_qa_report

    paths = write_qa_report(qa_result, folder, "qa", formats=("png",) if png else ())
    return {k: str(v) for k, v in paths.items()}


def write_conversion_outputs(out_dir: str | Path, study, standard_result, conversions: list, *, order: MedicalOrder,
                             standard_machine: MachineModel, machines: dict[str, MachineModel] | None = None, png: bool = True,
                             standard_qa: bool = True) -> dict:
    """Write the standard plan and every conversion (see the module docstring); returns the paths per machine.

    ``standard_result``: :class:`rayrt.optimize.planner.PlanningResult` of the standard plan;
    ``conversions``: :class:`rayrt.convert.convert.ConversionResult` list; ``machines``: the
    target MachineModels by name (default: the machine library).
    """
    from rayrt.machines import get_machine

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rs = _structure_set(study, out)
    written: dict[str, dict] = {}
    # the standard plan, with its own QA (independent dose, order criteria, deliverability)
    std_dose = Volume(np.asarray(standard_result.dose_gy, dtype=np.float32).reshape(standard_result.dose_grid.shape),
                      standard_result.dose_grid, "dose_gy")
    qa_std = None
    if standard_qa:
        from rayrt.qa.report import qa_plan

        qa_std = qa_plan(standard_result.plan, standard_machine, std_dose, masks=standard_result.masks, order=order, density=None,
                         recompute=None)
    written["standard"] = write_plan_folder(out / "standard", standard_result.plan, standard_machine, std_dose, rs, qa_std, png=png)
    summary = {"standard": {"machine": standard_machine.name, "plan_id": standard_result.plan.id, "folder": "standard"}, "machines": []}
    for conv in conversions:
        folder = out / _safe(conv.machine)
        if conv.released:
            m = (machines or {}).get(conv.machine) or get_machine(conv.machine)
            dose = Volume(np.asarray(conv.dose_gy, dtype=np.float32).reshape(conv.dose_grid.shape), conv.dose_grid, "dose_gy")
            written[conv.machine] = write_plan_folder(folder, conv.plan, m, dose, rs, conv.qa_result, png=png)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in ("rtplan.dcm", "rtdose.dcm"):
                (folder / stale).unlink(missing_ok=True)
            files = {}
            if conv.qa_result is not None:
                files.update(_write_qa(folder, conv.qa_result, png))
            else:
                (folder / "qa.json").write_text(json.dumps({"machine": conv.machine, "verdict": "fail", "released": False,
                                                            "reasons": conv.reasons}, indent=1), encoding="utf-8")
                files["json"] = str(folder / "qa.json")
            (folder / "NOT_RELEASED.txt").write_text("Conversion failed QA; no plan released for this machine.\n" + "\n".join(conv.reasons) + "\n",
                                                     encoding="utf-8")
            files["not_released"] = str(folder / "NOT_RELEASED.txt")
            written[conv.machine] = files
        s = conv.summary()
        s["folder"] = folder.name
        summary["machines"].append(s)
    (out / "conversion.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    written["conversion_json"] = {"json": str(out / "conversion.json")}
    return written


def convert_and_write(out_dir: str | Path, study, order: MedicalOrder, standard_machine: MachineModel, standard_result, machines: str | list[str],
                      *, mode: str | None = None, workers: int = 1, png: bool = True) -> list[str]:
    """The ``--machines a,b,c`` step of ``rayrt plan``: convert the standard plan for each machine and write every folder.

    Returns one summary line per machine (for the CLI to echo). Unknown machine names raise
    :class:`~rayrt.domain.errors.InputError` before any work is done.
    """
    from rayrt.convert.convert import convert_plan, standard_input_from_result
    from rayrt.domain.errors import InputError
    from rayrt.machines import get_machine

    names = [n.strip() for n in (machines.split(",") if isinstance(machines, str) else machines) if n and n.strip()]
    if not names:
        raise InputError("--machines is empty; give machine names separated by commas", field="machines")
    targets = [get_machine(n) for n in names]
    si = standard_input_from_result(standard_result, study, order, standard_machine)
    results = convert_plan(si, targets, mode, workers=workers)
    write_conversion_outputs(out_dir, study, standard_result, results, order=order, standard_machine=standard_machine,
                             machines={t.name: t for t in targets}, png=png)
    lines = []
    for r in results:
        a = r.attempts[-1] if r.attempts else None
        g = f", gamma {a.gamma_vs_standard_pct:.1f} %" if a is not None and a.gamma_vs_standard_pct is not None else ""
        lines.append(f"  {r.machine:18s} {r.status:8s} {r.coincidence.verdict if r.coincidence else '-':12s} mode {r.mode or '-'}"
                     f" ({len(r.attempts)} attempt(s){g})" + ("" if r.released else f": {r.reasons[-1][:120] if r.reasons else ''}"))
    return lines

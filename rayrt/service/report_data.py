"""The plan report's input gathered from the store: the job, its patient, its results, its reviews.

:func:`report_input` reads what ``GET /jobs/{id}/report`` renders (:mod:`rayrt.report`): the export
summary (``export/summary.json``), each plan's QA report and RTDOSE by their stored names, the
patient's primary image and structure masks, the medical order of the job and the physicists'
reviews. A job whose export stage has not finished is the caller's 409 (``_summary`` in the app).

:func:`report_remote` renders the PDF (:func:`dvh_curves_remote`: the full DVH curves the web page
draws) in a Ray task (the Ray options of imports,
``ServiceSettings.import_options``: by default ``num_cpus: 0``), not in the ingress replica: drawing
the pages holds the GIL for seconds, which would stall the replica's status answers.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import ray

from rayrt.pipeline.export import ExportResult
from rayrt.report.content import ReportInput, StructureData, read_plans
from rayrt.report.dvhs import DVHCurves, dvh_curves
from rayrt.service.remote import task_result
from rayrt.service.reviews import load_reviews
from rayrt.service.store import Store

__all__ = ["report_input", "report_bytes", "report_remote", "dvh_curves_of", "dvh_curves_remote"]


def report_input(
    store: Store, job_id: str, summary: ExportResult | None = None, now: datetime | None = None
) -> ReportInput:
    """Everything the report of ``job_id`` shows, read from ``store`` (``summary``: the export
    summary when the caller has read it already; ``now``: the generation time, default now)."""
    job = store.get_job(job_id)
    if summary is None:
        summary = store.get_stage_model(job.id, "export", "summary.json", ExportResult)

    def read(rel: str) -> bytes | None:
        stage, _, name = rel.partition("/")
        return store.read_result(job.id, rel) if store.has_stage_file(job.id, stage, name) else None

    patient = store.get_patient(job.patient_id)
    notes = []
    if patient.structure_version != job.structure_version:
        notes.append(
            f"The patient's structures were edited after this job was submitted (structure set version "
            f"{patient.structure_version}, the job's {job.structure_version}): the outlines and DVHs are of the "
            "current structures; the job's own structure set is its exported RTSTRUCT."
        )
    return ReportInput(
        job_id=job.id,
        patient_id=patient.patient_id or job.patient_id,
        patient_name=patient.patient_name,
        submitted_by=job.created_by,
        order=job.order,
        plans=read_plans(summary, read),
        ct=store.load_primary(job.patient_id),
        structures=[StructureData(structure=s, mask=m) for s, m in store.load_masks(job.patient_id)],
        reviews=load_reviews(store, job.id),
        generated_at=now or datetime.now(timezone.utc),
        notes=notes,
    )


def report_bytes(store: Store, job_id: str, now: datetime | None = None) -> bytes:
    """The report of ``job_id`` as PDF bytes (:func:`rayrt.report.pdf.report_pdf`)."""
    from rayrt.report.pdf import report_pdf  # matplotlib: loaded in the task's worker, not in the ingress

    return report_pdf(report_input(store, job_id, now=now))


def dvh_curves_of(store: Store, job_id: str) -> DVHCurves:
    """Every plan's full cumulative DVHs (:func:`rayrt.report.dvhs.dvh_curves`, the report's DVHs)."""
    return dvh_curves(report_input(store, job_id))


def _render(store: Store, job_id: str, now: datetime, what: str) -> bytes:
    """The task: the report's PDF (``what`` = "pdf", at the time the request came in) or the DVH
    curves as JSON (``what`` = "dvh")."""
    if what == "dvh":
        return dvh_curves_of(store, job_id).model_dump_json().encode()
    return report_bytes(store, job_id, now)


_report_task = ray.remote(max_retries=0)(_render)


async def _remote(store: Store, job_id: str, options: dict[str, Any], what: str) -> bytes:
    return await task_result(_report_task.options(**options).remote(store, job_id, datetime.now(timezone.utc), what))


async def report_remote(store: Store, job_id: str, options: dict[str, Any]) -> bytes:
    """:func:`report_bytes` in a Ray task (``options``: its Ray options); an InputError in the task
    reaches the caller as itself."""
    return await _remote(store, job_id, options, "pdf")


async def dvh_curves_remote(store: Store, job_id: str, options: dict[str, Any]) -> bytes:
    """:func:`dvh_curves_of` as JSON bytes, computed in a Ray task like the report."""
    return await _remote(store, job_id, options, "dvh")

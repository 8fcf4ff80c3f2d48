"""The plan report as a PDF: cover, plan summary and goals, DVHs, dose planes, QA per machine.

:func:`write_report` draws every page with matplotlib (no pyplot: safe in worker threads) and
writes them with :class:`matplotlib.backends.backend_pdf.PdfPages`, the document information set
(Title, Subject, Author, Keywords, CreationDate = the input's generation time). The same input gives
the same bytes. Each page carries a footer: job, patient, page n of N and that the DICOM RT objects
are the record.
"""

from __future__ import annotations

import io
from datetime import timezone
from pathlib import Path
from typing import BinaryIO

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from rayrt import __version__
from rayrt.report.content import ReportInput
from rayrt.report.dose_slices import dose_slice_pages
from rayrt.report.dvhs import dvh_pages
from rayrt.report.layout import Flow
from rayrt.report.pages import cover, goals, plan_summary, qa_pages

__all__ = ["report_pages", "write_report", "report_pdf", "report_metadata"]


def report_pages(data: ReportInput) -> list[Figure]:
    """Every page, in order: cover; plan summary and goals; DVHs; dose planes per plan; QA per machine."""
    flow = Flow()
    cover(flow, data)
    flow.page_break()
    plan_summary(flow, data)
    goals(flow, data)
    dvh_pages(flow, data)
    qa = Flow()
    qa_pages(qa, data)
    pages = flow.pages + dose_slice_pages(data) + qa.pages
    name = data.patient_name or data.patient_id
    for n, fig in enumerate(pages, start=1):
        fig.text(
            0.5,
            0.018,
            f"rayrt plan review \u00b7 job {data.job_id} \u00b7 patient {name} ({data.patient_id}) \u00b7 "
            f"page {n} of {len(pages)} \u00b7 a review aid: the DICOM RT objects are the record",
            ha="center",
            fontsize=6.5,
            color="#666666",
        )
    return pages


def report_metadata(data: ReportInput) -> dict:
    """The PDF document information of the report."""
    machines = [p.machine for p in data.plans]
    return {
        "Title": f"rayrt plan review, job {data.job_id}",
        "Subject": f"Treatment plan review of patient {data.patient_id}: {', '.join(machines)}",
        "Author": "rayrt",
        "Creator": f"rayrt {__version__}",
        "Keywords": ", ".join(
            ["radiotherapy", "plan review", f"job {data.job_id}", f"patient {data.patient_id}", *machines]
        ),
        "CreationDate": data.generated_at.astimezone(timezone.utc)
        if data.generated_at.tzinfo
        else data.generated_at.replace(tzinfo=timezone.utc),
    }


def write_report(data: ReportInput, out: str | Path | BinaryIO) -> None:
    """Write the report of ``data`` as a PDF to a path or a binary file object."""
    pages = report_pages(data)
    with PdfPages(out, metadata=report_metadata(data)) as pdf:
        for fig in pages:
            pdf.savefig(fig)


def report_pdf(data: ReportInput) -> bytes:
    """The report of ``data`` as PDF bytes."""
    buf = io.BytesIO()
    write_report(data, buf)
    return buf.getvalue()

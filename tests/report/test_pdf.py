"""The plan report as a PDF (rayrt.report), from a small case planned in this process: pages,
document information, determinism, the reviews on the cover, and the input's checks."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from helpers.planning import FAST_PLANNING

from rayrt.domain.order import parse_order
from rayrt.domain.planning import PlanningRequest
from rayrt.domain.review import PlanReview, PlanReviews, ReviewDecision
from rayrt.pipeline import run_recipe
from rayrt.pipeline.export import ExportResult
from rayrt.report import ReportInput, StructureData, read_plans
from rayrt.report.dvhs import plan_dvhs
from rayrt.report.pdf import report_pages, report_pdf

JOB = "job0report"
WHEN = datetime(2026, 12, 8, 9, 30, tzinfo=timezone.utc)
#: a machine whose plan is reused (released) and one converted by re-optimisation
MACHINES = ["standard_twin", "truebeam_m120"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A small case planned with the tests' fast settings, its results under ``out/<stage>/``."""
    from helpers.study import SMALL_ORDER, make_small_study

    study = make_small_study(with_dose=False)
    out = tmp_path_factory.mktemp("report-plan")
    order = parse_order(SMALL_ORDER)
    run_recipe(study, order, PlanningRequest(machines=MACHINES, **FAST_PLANNING), out_dir=out)
    return study, order, out


def _reader(out: Path):
    return lambda rel: (out / rel).read_bytes() if (out / rel).is_file() else None


def _input(planned, reviews: list[PlanReview] | None = None, **kw) -> ReportInput:
    study, order, out = planned
    summary = ExportResult.model_validate_json((out / "export" / "summary.json").read_text())
    fields = dict(
        job_id=JOB,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        submitted_by="alice",
        order=order,
        plans=read_plans(summary, _reader(out)),
        ct=study.primary,
        structures=[StructureData(structure=s.structure, mask=s.mask) for s in study.structures],
        reviews=PlanReviews(job_id=JOB, reviews=reviews or []),
        generated_at=WHEN,
    )
    fields.update(kw)
    return ReportInput(**fields)


def _pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf))


def _info(pdf: bytes, key: str) -> str:
    m = re.search(rb"/" + key.encode() + rb" \(([^)]*)\)", pdf)
    assert m, f"no /{key} in the document information"
    return m.group(1).decode("latin-1")


def test_read_plans_finds_qa_and_doses(planned):
    data = _input(planned)
    assert [p.machine for p in data.plans] == ["standard", *MACHINES]
    std, twin = data.plans[0], data.plans[1]
    assert std.dose is not None and std.dose.quantity == "dose_gy" and std.qa is not None
    assert twin.released and twin.dose is not None and twin.qa is not None and twin.qa.gamma is not None
    for p in data.plans:
        assert (p.dose is not None) == p.released  # a plan not released has no RTDOSE
    # DVHs on the dose grid: the normalisation gives PTV D95 = the prescription (50 Gy)
    dvh = plan_dvhs(data)["standard"]
    assert dvh.metrics["PTV"].d95_gy == pytest.approx(50.0, abs=0.05)
    assert set(dvh.values) == {"BODY", "PTV", "Core"}


@pytest.fixture(scope="module")
def base_pdf(planned) -> tuple[bytes, float]:
    """The report without reviews, and how long it took (s)."""
    t0 = time.perf_counter()
    pdf = report_pdf(_input(planned))
    return pdf, time.perf_counter() - t0


def _texts(fig) -> str:
    """Every text drawn on a page, one per line (a wrapped table cell: one line per piece)."""
    return "\n".join(t.get_text() for t in fig.texts)


def _words(fig) -> str:
    """A page's text as one line of words (wrapping undone)."""
    return " ".join(_texts(fig).split())


def test_report_is_a_pdf_with_every_section(planned, base_pdf):
    data = _input(planned)
    pdf, seconds = base_pdf
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    with_dose = [p.machine for p in data.plans if p.dose is not None]
    pages = report_pages(data)
    titles = [_texts(f).splitlines()[0] for f in pages]
    # cover; summary + goals; a DVH page per converted plan with a dose (over the standard's);
    # a dose page per plan with a dose; QA per machine
    assert titles[0] == "Treatment plan review" and titles[1] == "Plan summary"
    assert [t for t in titles if t.startswith("DVH: ")] == [
        f"DVH: {m} (solid) vs standard (dashed)" for m in with_dose[1:]
    ]
    doses = [n for n, f in enumerate(pages) if f.get_suptitle().startswith("Dose: ")]
    assert [pages[n].get_suptitle().split()[1] for n in doses] == with_dose
    dvhs = [n for n, t in enumerate(titles) if t.startswith("DVH: ")]
    qa_at = titles.index("Quality assurance per machine")
    assert 1 < min(dvhs) and max(dvhs) < min(doses) and max(doses) < qa_at  # the sections in order
    qa_text = "\n".join(_texts(f) for f in pages[qa_at:])
    assert all(f"{p.machine}: " in qa_text for p in data.plans)
    assert all(f"page {n} of {len(pages)}" in _texts(f) for n, f in enumerate(pages, start=1))
    assert _pages(pdf) == len(pages)
    assert JOB in _info(pdf, "Title")
    assert _info(pdf, "Author") == "rayrt"
    assert data.patient_id in _info(pdf, "Subject") and "truebeam_m120" in _info(pdf, "Keywords")
    assert _info(pdf, "CreationDate").startswith("D:20261208093000")
    assert seconds < 30, f"the report of a small job took {seconds:.1f} s"


def test_same_input_same_bytes_and_a_review_changes_it(planned, base_pdf):
    assert report_pdf(_input(planned)) == base_pdf[0]  # deterministic: the generation time is an input
    review = PlanReview(
        machine="standard_twin",
        plan_id="p1",
        decision=ReviewDecision.rejected,
        comment="PTV coverage low inferiorly",
        by="phys",
        at=WHEN,
    )
    with_review = report_pdf(_input(planned, [review]))
    assert with_review != base_pdf[0] and with_review.startswith(b"%PDF-")
    cover = _words(report_pages(_input(planned, [review]))[0])
    assert "rejected by phys, 2026-12-08 09:30 UTC" in cover and "PTV coverage low inferiorly" in cover
    assert "review aid" in cover and "DICOM RT objects" in cover
    approved = review.model_copy(update={"decision": ReviewDecision.approved, "comment": "", "by": "bob"})
    cover = _words(report_pages(_input(planned, [review, approved]))[0])
    assert "approved by bob" in cover and "Review history" in cover  # the latest decision, and every decision


def test_without_order_or_structures(planned):
    """No order (no prescription: isodoses relative to the maximum) and no structures still render."""
    data = _input(planned, order=None, structures=[])
    pdf = report_pdf(data)
    assert pdf.startswith(b"%PDF-") and _pages(pdf) >= 4


def test_masks_must_be_on_the_ct_grid(planned):
    study = planned[0]
    bad = StructureData(structure=study.structures[0].structure, mask=np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        _input(planned, structures=[bad])

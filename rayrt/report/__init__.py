"""Plan report: one job's review (patient, prescription, plans, goals, DVHs, dose planes, QA,
the physicists' decisions) as a PDF for the patient record.

* :mod:`rayrt.report.content` -- the typed input (:class:`ReportInput`) and :func:`read_plans`
* :mod:`rayrt.report.pdf` -- :func:`~rayrt.report.pdf.write_report` / :func:`~rayrt.report.pdf.report_pdf`
  (imports matplotlib; the pages: :mod:`~rayrt.report.pages`, :mod:`~rayrt.report.dvhs`,
  :mod:`~rayrt.report.dose_slices`, laid out by :mod:`~rayrt.report.layout`)

The core: no HTTP, no Ray (the service gathers the input in ``rayrt.service.report_data``).
"""

from rayrt.report.content import PlanData, ReportInput, StructureData, read_plans

__all__ = ["PlanData", "ReportInput", "StructureData", "read_plans"]

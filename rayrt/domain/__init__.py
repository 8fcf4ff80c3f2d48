"""Typed data at every boundary: pydantic v2 models for patients, orders, machines, plans, jobs."""

from rayrt.domain.errors import InputError, RayrtError
from rayrt.domain.job import Job, JobState, StageProgress
from rayrt.domain.order import MedicalOrder, Normalization, ObjectiveKind, ObjectiveSpec, Prescription, load_order
from rayrt.domain.patient import ImageSeriesInfo, Patient, Structure, StructureKind

__all__ = [
    "RayrtError",
    "InputError",
    "ImageSeriesInfo",
    "Patient",
    "Structure",
    "StructureKind",
    "MedicalOrder",
    "ObjectiveKind",
    "ObjectiveSpec",
    "Prescription",
    "Normalization",
    "load_order",
    "Job",
    "JobState",
    "StageProgress",
]

"""The planning pipeline: one recipe of stages, run the same way by `rayrt plan`, the service's
jobs and `rayrt demo`.

* :mod:`rayrt.pipeline.executor` -- where a stage's fan-out runs (:class:`Executor`, :class:`LocalExecutor`)
* :mod:`rayrt.pipeline.runner` -- :class:`Stage`, :func:`stage_of`, :func:`run_stages`, stored results
* :mod:`rayrt.pipeline.recipe` -- the ordered recipe (:data:`RECIPE`), :func:`run_recipe`, :func:`check_request`
* stages by concern: :mod:`~rayrt.pipeline.analysis` (load, structures, dvh),
  :mod:`~rayrt.pipeline.planning` (geometry, beamlets, dij), :mod:`~rayrt.pipeline.optimization`
  (problem, fmo, sequence, dao, normalize), :mod:`~rayrt.pipeline.conversion` (convert, qa),
  :mod:`~rayrt.pipeline.export` (export)

The package is the core: no Ray, no HTTP (the Ray executor lives in :mod:`rayrt.service`).
"""

from rayrt.pipeline.analysis import StudySource, load_source
from rayrt.pipeline.executor import Executor, LocalExecutor, Progress
from rayrt.pipeline.recipe import PLANNING_STAGES, RECIPE, as_order, check_request, recipe, run_recipe, validate_order
from rayrt.pipeline.runner import (
    Artefacts,
    PipelineResult,
    Stage,
    StageContext,
    StageEvent,
    restore_output,
    result_model,
    run_stages,
    stage_of,
    write_result_files,
)

__all__ = [
    "Artefacts",
    "Executor",
    "LocalExecutor",
    "PLANNING_STAGES",
    "PipelineResult",
    "Progress",
    "RECIPE",
    "Stage",
    "StageContext",
    "StageEvent",
    "StudySource",
    "as_order",
    "check_request",
    "load_source",
    "recipe",
    "restore_output",
    "result_model",
    "run_recipe",
    "run_stages",
    "stage_of",
    "validate_order",
    "write_result_files",
]

"""Plan conversion: machine coincidence (how alike two machines are) and standard -> specific plans.

* :mod:`~rayrt.convert.convert` -- :func:`~rayrt.convert.convert.convert_for_machine` (StandardPlan +
  PlanGeometry + target machine -> ConversionResult): attempts, candidates, release loop
* :mod:`~rayrt.convert.results` -- the typed outcome: AttemptRecord, ConversionResult
* :mod:`~rayrt.convert.policy` -- ConversionOptions (configs/conversion.yaml), coincidence, recompute modes
* :mod:`~rayrt.convert.coincidence`, :mod:`~rayrt.convert.source_match` -- MLC and beam comparison
* :mod:`~rayrt.convert.fluence` -- segment fluence on any bixel grid (conversion and release QA)
* :mod:`~rayrt.convert.transfer` -- segments copied leaf by leaf onto finer target leaves
* :mod:`~rayrt.optimize.mu_refit` (core optimiser) -- the exact segment-MU refit on the prescription-normalised dose
* :mod:`~rayrt.convert.release` -- QA before release

Core: no Ray, no HTTP; imports nothing of rayrt.pipeline or rayrt.service.
"""

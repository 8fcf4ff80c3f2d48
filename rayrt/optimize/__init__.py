"""Inverse planning: objectives and constraints (registry), fluence-map optimisation, leaf
sequencing onto any MLCModel, direct aperture optimisation, normalisation (the recipe that runs
them is :mod:`rayrt.pipeline`).

Modules (each stage a plain function of typed inputs, importable without Ray):
``objectives`` (registry), ``sparse`` (row-subset float32 Dij, numba products), ``problem``
(``build_problem``), ``fmo`` (``optimize_fluence``), ``layout`` (beamlet grids, leaf-pair
resampling), ``sequencing`` (``get_sequencer``), ``dao`` (``optimize_apertures``), ``normalize``,
``standard`` (StandardPlan, PlanGeometry), ``recipes`` (reference orders), ``synthetic`` (analytic test case).
"""

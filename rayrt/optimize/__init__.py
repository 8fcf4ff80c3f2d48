"""Inverse planning: objectives and constraints (registry), fluence-map optimisation, leaf
sequencing onto any MLCModel, direct aperture optimisation, normalisation and the planning recipe.

Modules (each stage a plain function of typed inputs, importable without Ray):
``objectives`` (registry), ``sparse`` (row-subset float32 Dij, numba products), ``problem``
(``build_problem``), ``fmo`` (``optimize_fluence``), ``layout`` (beamlet grids, leaf-pair
resampling), ``sequencing`` (``get_sequencer``), ``dao`` (``optimize_apertures``), ``normalize``,
``planner`` (``plan_standard``), ``recipes`` (reference orders), ``synthetic`` (analytic test case).
"""

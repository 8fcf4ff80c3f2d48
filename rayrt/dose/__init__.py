"""Photon dose engine: machines as data, IEC 61217 beam geometry, radiological depth, SVD pencil-beam Dij,
aperture dose.

Main entry points (see each module for the physics and units):

* :mod:`rayrt.machines` (the machine library, outside this package) -- ``list_machines()``, ``get_machine(name)``
* :mod:`rayrt.dose.phantom` -- ``density_from_hu``, ``computation_phantom`` (overrides, external)
* :mod:`rayrt.dose.geometry` -- ``BeamGeometry``, ``BeamletGrid``, ``beamlet_grid``, ``beamlet_grid_for_field``
* :mod:`rayrt.dose.dij` -- ``compute_dij`` (pure, chunkable), ``plan_dij``, ``dose_grid_for``, ``hstack_exact``
* :mod:`rayrt.dose.aperture` -- ``aperture_fluence``, ``segment_fluence``, ``aperture_dose``
* :mod:`rayrt.dose.pencil_beam` -- ``pencil_beam_dose``, ``water_dose``, ``calibration_factor``

Importing this package is light; numba kernels compile (or load from cache) on first use.
"""

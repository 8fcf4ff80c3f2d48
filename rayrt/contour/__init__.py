"""Contours and structures: automatic, semi-automatic and manual delineation.

Masks and DICOM-style closed planar polygons (LPS mm) are converted by :mod:`rayrt.imaging.polygons`
(:func:`~rayrt.imaging.polygons.rasterize_polygons`, :func:`~rayrt.imaging.polygons.mask_to_polygons`),
which the imaging package needs too: rayrt.contour builds on rayrt.imaging, never the other way round.
"""

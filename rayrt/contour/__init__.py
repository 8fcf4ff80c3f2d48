"""Contours and structures: automatic, semi-automatic and manual delineation, mask <-> polygon.

``rayrt.contour.polygons`` converts between voxel masks and DICOM-style closed planar polygons
(LPS mm): :func:`~rayrt.contour.polygons.rasterize_polygons` (even-odd filling at voxel centres)
and :func:`~rayrt.contour.polygons.mask_to_polygons` (marching squares between voxel centres).
"""

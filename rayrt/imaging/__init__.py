"""Image volumes on explicit grids, DICOM import/export and phantoms."""

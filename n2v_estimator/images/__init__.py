"""Image files: TIFF/OME-TIFF/ImageJ, PNG/JPEG, .npy and zarr/OME-Zarr read lazily and written atomically, with
their calibration (pixel sizes, frame interval, channel names).

Internal: the public API is ``n2v_estimator``'s top level."""

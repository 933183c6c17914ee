"""Files: atomic writes, image files and their calibration, model files, BioImage Model Zoo packages, hostile-file checks.

Internal: the public API is ``n2v_estimator``'s top level."""

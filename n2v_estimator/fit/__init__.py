"""Training: the plan (every setting and input checked first), blind-spot masking, the training loop, the calibration check.

Internal: the public API is ``n2v_estimator``'s top level."""

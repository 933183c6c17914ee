"""Training: the plan (every setting and input checked first), the training loop, several devices, the calibration
check.

Internal: the public API is ``n2v_estimator``'s top level."""

"""Prediction: tiling and test-time augmentation, the posterior, dask arrays chunk by chunk, the self-supervised score.

Internal: the public API is ``n2v_estimator``'s top level."""

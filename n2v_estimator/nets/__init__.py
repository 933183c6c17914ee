"""The networks: their description and constraints, the builder, the U-Net and its widths, the blind-spot network,
losses, noise models.

Internal: the public API is ``n2v_estimator``'s top level."""

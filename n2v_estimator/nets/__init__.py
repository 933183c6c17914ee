"""The networks: their description and constraints, the builder, the U-Net, the blind-spot network, noise models.

Internal: the public API is ``n2v_estimator``'s top level."""

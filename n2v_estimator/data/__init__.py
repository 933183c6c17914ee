"""The data: axes (canonical S, C, (Z), Y, X), normalisation, training patches, images read on demand, blind spots.

Internal: the public API is ``n2v_estimator``'s top level."""

"""Where and how the network runs: devices, precision and memory layout, memory budgets, progress bars.

Internal: the public API is ``n2v_estimator``'s top level."""

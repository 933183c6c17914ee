"""Model files: our safetensors + JSON file (read without torch, and into a network), BioImage Model Zoo
packages, and the TensorFlow n2v's Keras model folders.

Internal: the public API is ``n2v_estimator``'s top level."""

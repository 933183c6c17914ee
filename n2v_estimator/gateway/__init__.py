"""The border: every stranger's file read within what it declares and the machine holds (HDF5, zarr codecs,
zip packages, metadata sizes), strings from files made plain or shown escaped, and our own files written atomically.

Internal: the public API is ``n2v_estimator``'s top level."""

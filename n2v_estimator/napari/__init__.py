"""The napari plugin (manifest ``napari.yaml``): train and denoise widgets, sample data.

Imported by napari only, never by the estimator; needs the ``[napari]`` extra
(napari and a Qt binding).
"""

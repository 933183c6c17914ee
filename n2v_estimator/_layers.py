"""The package's layers, from the ground up: a module imports only from its own folder and the layers below it.

Written once, here; ``tests/test_layout.py`` holds every import of the package to it and the architecture page
(``docs/architecture.md``) to its order. What a lower layer needs from a higher one arrives as a plain value, a
small typed record or a callable, never as an import.
"""

LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "_version",
        "_extras",
        "_constraints",
        "_layers",
        "_typing",
    ),  # facts and helpers that know nothing of images or networks
    ("gateway",),  # every byte and string from a stranger's file, and every file written
    ("data",),  # images in: axes, normalisation, patches, reading on demand, blind spots
    ("images",),  # image files: formats and their calibration
    ("nets",),  # the networks, their geometry, losses and noise models
    ("runtime",),  # where and how a network runs: device, precision, memory, progress
    ("predict",),  # denoising: tiles, the posterior, dask arrays, the self-supervised score
    ("fit",),  # training: the plan, the loop, several devices, the calibration check
    ("models",),  # model files, Model Zoo packages, n2v's Keras models
    ("exchange",),  # the estimator's own methods of exchange (pickling, the zoo, n2v), as mixins beside it
    ("estimator",),  # the scikit-learn estimator
    ("_plot",),  # a fitted estimator's training curve
    ("cli", "napari", "__init__"),  # the entrances: the command, the napari plugin, the package's names
)


def layer_of(module: str) -> int:
    """The floor (0 = the ground) of ``module``, a dotted name inside the package (``"fit.plan"``)."""
    top = module.split(".")[0]
    for floor, names in enumerate(LAYERS):
        if top in names:
            return floor
    raise KeyError(f"{module!r} is on no layer of n2v_estimator._layers.LAYERS: add its folder or module there.")

"""The package version, in a module of its own so that every module can import it
without importing the package's ``__init__`` (and so without an import cycle)."""

__version__ = "0.1.0"

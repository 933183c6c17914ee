"""The error a stranger's model file or package raises when it cannot be read as one."""


class ModelFileError(ValueError):
    """A model file is malformed, of an unknown version, or does not match its network."""

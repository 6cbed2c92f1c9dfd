"""Error types raredet raises for bad input. Each message names the file, field or record."""


class RaredetError(Exception):
    """Base class: an error in what the user gave raredet, with a message that says what to do."""


class ConfigError(RaredetError, ValueError):
    """A pipeline.config or label map that cannot be used (syntax, unknown field, bad value)."""


class DataError(RaredetError, ValueError):
    """A dataset record, annotation or image that cannot be used."""


class CheckpointError(RaredetError, ValueError):
    """A checkpoint that cannot be loaded."""

"""Error types raredet raises for bad input. Each message names the file, field or record."""


class RaredetError(Exception):
    """Base class: an error in what the user gave raredet, with a message that says what to do."""


class ConfigError(RaredetError, ValueError):
    """A pipeline.config or label map that cannot be used (syntax, unknown field, bad value)."""


class DataError(RaredetError, ValueError):
    """A dataset record, annotation or image that cannot be used."""


class CheckpointError(RaredetError, ValueError):
    """A checkpoint that cannot be loaded."""


def user_message(err: BaseException) -> str:
    """The message of `err` as a user should read it.

    torch's DataLoader re-raises an exception from a worker process as the same type whose text is
    "Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...", the worker's whole
    traceback; this keeps only the original message (the traceback's last entry) and names the worker.
    """
    text = str(err)
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    first_line = text.split("\n", 1)[0]  # "Caught DataError in DataLoader worker process 0."
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    position = text.rfind(marker)
    if position < 0:
        return text
    where = first_line.split(" in ", 1)[1].rstrip(".") if " in " in first_line else "a worker process"
    return f"{text[position + len(marker):].strip()} (in {where})"

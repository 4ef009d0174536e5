"""Domain errors raised by the core. Messages are for the user: what is wrong, what to do."""

from storage.errors import ChorusError, NotFound, StorageError

__all__ = [
    "ChorusError",
    "NotFound",
    "StorageError",
    "ModelUnavailable",
    "ModelTooLarge",
    "AdapterIncompatible",
    "AdapterCorrupt",
    "ExportFormatUnknown",
    "ExportInvalid",
    "CardInvalid",
    "UnsafeArchive",
    "GenerationStopped",
]


class ModelUnavailable(ChorusError):
    """The base model cannot be found, downloaded or loaded."""


class ModelTooLarge(ModelUnavailable):
    """The model would not fit in the memory the device has free."""


class AdapterIncompatible(ChorusError):
    """An adapter was made for another base model, or its files do not fit this one."""


class AdapterCorrupt(ChorusError):
    """An adapter's files on disk are damaged (checksum mismatch, truncated tensors)."""


class ExportFormatUnknown(ChorusError):
    """A chat export whose format Chorus does not recognise."""


class ExportInvalid(ChorusError):
    """A chat export in a known format that is malformed, truncated, or empty."""


class CardInvalid(ChorusError):
    """A character card or persona bundle that cannot be read."""


class UnsafeArchive(ChorusError):
    """A zip with path traversal, links, absurd sizes or compression ratios."""


class GenerationStopped(ChorusError):
    """A reply was stopped by the user before it finished."""

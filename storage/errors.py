"""The root of Chorus's error hierarchy: errors whose message is written for the user.

Every layer raises a subclass of `ChorusError` with a message that says what is wrong
and what to do; only the edges (the command line, the web UI) turn them into exit
codes or `gr.Error` toasts. Anything else that escapes is a bug.
"""


class ChorusError(Exception):
    """An error meant to be shown to the user as it is."""


class NotFound(ChorusError):
    """A persona, conversation, message or adapter that does not exist."""


class StorageError(ChorusError):
    """The data folder could not be written (disk full, permissions...)."""

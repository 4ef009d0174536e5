"""Quiet third-party logging for users: what the libraries print that is noise here."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """Hide warnings that are noise for a user (bitsandbytes' optional 'kernels' package)."""
    for name in ("bitsandbytes", "transformers.modeling_utils", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass

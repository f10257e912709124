"""Settings left at None keep their default: the one rule the CLI and the Python API share."""

from __future__ import annotations

import dataclasses


def replace_given(obj, **overrides):
    """dataclasses.replace with only the overrides that were given (None means "keep obj's value")."""
    return dataclasses.replace(obj, **{k: v for k, v in overrides.items() if v is not None})

"""What every section of the parameter schema shares: strict models whose unknown keys are errors
that suggest the closest valid key, and the error that names the file and the key."""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class ParamsError(ValueError):
    """A params file that does not fit the schema; the message names the file and the key."""


class Strict(BaseModel):
    """A section: unknown keys are errors that suggest the closest valid key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = list(cls.model_fields)
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(known)}"
                    raise ValueError(f"unknown key {key!r}; {hint}")
        return data

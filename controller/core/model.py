"""The base of every netroot model: frozen, unknown keys refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Base of every model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

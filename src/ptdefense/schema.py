"""The strict base of every params section (params.yaml and each attack's own settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictSection(BaseModel):
    # strict: "3" or true are not silently read as 3 or 1 (YAML turns `yes` into true);
    # extra="forbid": a misspelt key fails instead of being ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

"""Beam model parameters of a photon machine (owned by the dose engine, rayrt.dose).

PLACEHOLDER: the dose-engine work defines the real parameter set here (pencil-beam kernels,
primary fluence profile, penumbra, output factors...).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BeamModel(BaseModel):
    model_config = ConfigDict(extra="allow")

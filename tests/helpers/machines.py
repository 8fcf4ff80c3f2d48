"""Small, hand-built machine models and plans for the RTPLAN / MLC-coincidence tests.

``varian()`` (Millennium 120 MLC, X and Y jaws), ``elekta()`` (Agility: no X jaws) and
``halcyon()`` (dual-layer MLC, no jaws) share one synthetic pencil-beam model (``beam_model()``);
``make_plan`` builds a random but deliverable step-and-shoot plan for any of them.
"""

from __future__ import annotations

import numpy as np

from rayrt.domain.beam_model import BeamModel
from rayrt.domain.machine import JawModel, MachineLimits, MachineModel, MLCModel
from rayrt.domain.plan import Beam, Plan, Segment


def beam_model() -> BeamModel:
    r = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
    return BeamModel(
        attenuation_per_mm=0.005,
        betas_per_mm=(0.3, 0.016, 0.0051),
        kernel_point_weights=(0.1, 0.0, 0.0),
        kernel_radii_mm=r,
        kernels_per_mm2=(
            [0.01 * np.exp(-x / 3) for x in r],
            [0.001 * np.exp(-x / 10) for x in r],
            [0.0001 * np.exp(-x / 30) for x in r],
        ),
        primary_fluence_radius_mm=[0.0, 200.0],
        primary_fluence=[1.0, 1.0],
        source_sigma_mm=2.0,
        head_scatter_field_mm=[40.0, 100.0, 400.0],
        head_scatter=[0.95, 1.0, 1.05],
    )


def millennium_boundaries() -> list[float]:
    return list(np.concatenate([np.arange(-200, -100, 10.0), np.arange(-100, 100, 5.0), np.arange(100, 201, 10.0)]))


def varian() -> MachineModel:
    return MachineModel(
        name="TrueBeam1",
        vendor="Varian Medical Systems",
        model="TrueBeam",
        nominal_energy_mv=6,
        beam=beam_model(),
        mlc=MLCModel(name="Millennium 120", leaf_boundaries_mm=millennium_boundaries(), interdigitation=True),
        jaw_x=JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMX"),
        jaw_y=JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMY"),
    )


def elekta() -> MachineModel:
    return MachineModel(
        name="VersaHD1",
        vendor="Elekta",
        model="Versa HD",
        nominal_energy_mv=6,
        beam=beam_model(),
        mlc=MLCModel(
            name="Agility", leaf_boundaries_mm=list(np.arange(-200, 201, 5.0)), interdigitation=True, transmission=0.004
        ),
        jaw_x=None,
        jaw_y=JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMY"),
    )


def halcyon() -> MachineModel:
    return MachineModel(
        name="Halcyon1",
        vendor="Varian Medical Systems",
        model="Halcyon",
        nominal_energy_mv=6,
        fff=True,
        beam=beam_model(),
        mlc=MLCModel(
            name="Halcyon dual layer",
            leaf_boundaries_mm=list(np.arange(-140, 141, 10.0)),
            interdigitation=True,
            dual_layer=True,
            transmission=0.004,
        ),
        jaw_x=None,
        jaw_y=None,
        limits=MachineLimits(max_field_x_mm=280.0, max_field_y_mm=280.0),
    )


def make_plan(machine: MachineModel, n_beams: int = 2, n_segments: int = 3, seed: int = 0) -> Plan:
    rng = np.random.default_rng(seed)
    n = machine.mlc.num_pairs
    c = machine.mlc.leaf_centers_mm
    beams = []
    for b in range(n_beams):
        segs = []
        for s in range(n_segments):
            inside = np.abs(c) < 40 - 8 * s
            park = machine.mlc.min_gap_mm / 2  # closed pairs parked at the minimum gap
            x1 = np.where(inside, -30 + rng.uniform(-5, 5, n), -park).round(2)
            x2 = np.where(inside, 30 + rng.uniform(-5, 5, n) - 5 * s, park).round(2)
            segs.append(Segment(x1_mm=x1.tolist(), x2_mm=x2.tolist(), mu=float(round(rng.uniform(5, 40), 2))))
        beams.append(
            Beam(
                name=f"G{360 // n_beams * b}",
                number=b + 1,
                gantry_deg=360.0 / n_beams * b,
                collimator_deg=0 if b else 10,
                isocenter_mm=(1.5, -20.0, 12.25),
                segments=segs,
            )
        )
    return Plan(
        machine=machine.name,
        label="test",
        patient_id="P1",
        fractions=25,
        prescription_gy=50.0,
        target="PTV",
        beams=beams,
    )

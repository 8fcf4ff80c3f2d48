"""Leaf sequencers behind one registry:
``get_sequencer(name).sequence(fluence_map, beamlets, machine, max_segments, limits=SegmentLimits, min_weight=0)``
(segment limits: :mod:`rayrt.domain.segments`)."""

from rayrt.optimize.sequencing.base import (
    Sequencer,
    SequencingResult,
    get_sequencer,
    jaws_for,
    list_sequencers,
    make_deliverable,
    register_sequencer,
)

__all__ = [
    "Sequencer",
    "SequencingResult",
    "get_sequencer",
    "list_sequencers",
    "register_sequencer",
    "make_deliverable",
    "jaws_for",
]

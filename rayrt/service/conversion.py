"""Conversion worker pools: standard plan -> plan for one specific treatment machine.

One pool of :data:`ConversionWorker` actors per target machine. Each actor loads its
:class:`~rayrt.domain.machine.MachineModel` once, in ``__init__``, and then runs a conversion
function on every payload it is given::

    fn(payload, machine: MachineModel) -> result

The function is named by a registry name (:data:`CONVERSIONS`, e.g. ``"leaf_resample"``) or by
a dotted path (``"rayrt.convert.plan:convert_plan"`` or ``"rayrt.convert.plan.convert_plan"``).

:class:`ConversionPools` creates the pools (initial size per machine from the service config
key ``conversion_pool``), sends each payload to the least-loaded actor of the machine's pool,
and grows a pool by one actor when more conversions are queued than the pool has actors and
the pool is below its maximum. :meth:`ConversionPools.shrink_idle` returns idle extra actors.

The built-in ``leaf_resample`` conversion (:func:`resample_leaves`, :func:`leaf_resample`)
maps step-and-shoot apertures from one MLC leaf-pair geometry onto another.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.errors import InputError
from rayrt.domain.machine import MachineModel, load_machine
from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.service.policies import ConversionPoolSettings  # pure module, so settings.py can import it without Ray

__all__ = [
    "CONVERSIONS",
    "ConversionPoolSettings",
    "ConversionPools",
    "ConversionPoolsActor",
    "ConversionResult",
    "ConversionWorker",
    "LeafResampleRequest",
    "PoolStats",
    "leaf_resample",
    "load_machine_model",
    "get_or_create_conversion_pools",
    "open_area_mm2",
    "register_conversion",
    "resample_leaves",
    "resolve_conversion",
]


# --------------------------------------------------------------------------------------------
# leaf-boundary resampling (pure numpy)


def resample_leaves(
    x1_mm: np.ndarray,
    x2_mm: np.ndarray,
    src_boundaries_mm: Sequence[float],
    dst_boundaries_mm: Sequence[float],
    *,
    mode: Literal["cover", "area"] = "cover",
    min_gap_mm: float = 0.5,
    min_position_mm: float = -200.0,
    max_position_mm: float = 200.0,
    open_tol_mm: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Map leaf-tip positions from one leaf-pair geometry onto another.

    Args:
        x1_mm, x2_mm: minus/plus-side leaf tips, shape ``(segments, n_src_pairs)`` or
            ``(n_src_pairs,)``, mm at the isocenter plane (X of the beam-limiting device).
        src_boundaries_mm, dst_boundaries_mm: leaf-pair boundaries along Y (N+1 values, mm).
        mode: ``"cover"``: each target pair opens over the union of the source openings it
            overlaps (never underdoses the aperture, may add area); ``"area"``: each target
            pair takes the overlap-weighted mean tips of the open source pairs it overlaps,
            scaled by the open fraction of its width (keeps the open area to first order).
        min_gap_mm: open pairs narrower than this are widened symmetrically; closed pairs are
            parked with this gap at the middle of the segment's open field.
        min_position_mm, max_position_mm: leaf travel limits of the target MLC.

    Returns:
        ``(x1, x2)`` of shape ``(segments, n_dst_pairs)`` (or ``(n_dst_pairs,)``).
    """
    x1 = np.asarray(x1_mm, dtype=float)
    x2 = np.asarray(x2_mm, dtype=float)
    squeeze = x1.ndim == 1
    x1, x2 = np.atleast_2d(x1), np.atleast_2d(x2)
    bs = np.asarray(src_boundaries_mm, dtype=float)
    bd = np.asarray(dst_boundaries_mm, dtype=float)
    if x1.shape != x2.shape or x1.shape[1] != bs.size - 1:
        raise InputError(
            f"leaf positions have {x1.shape[-1]} pairs but the source MLC has {bs.size - 1}; pass the source machine's leaf boundaries",
            kind="conversion",
            field="source_leaf_boundaries_mm",
        )
    # overlap (mm along Y) of target pair d with source pair s: (Nd, Ns)
    ov = np.clip(np.minimum(bd[1:, None], bs[None, 1:]) - np.maximum(bd[:-1, None], bs[None, :-1]), 0.0, None)
    is_open = (x2 - x1) > open_tol_mm  # (S, Ns)
    w = ov[None, :, :] * is_open[:, None, :]  # (S, Nd, Ns)
    has = w.sum(axis=2) > 0  # (S, Nd)
    if mode == "cover":
        t1 = np.where(w > 0, x1[:, None, :], np.inf).min(axis=2)
        t2 = np.where(w > 0, x2[:, None, :], -np.inf).max(axis=2)
    elif mode == "area":
        wsum = np.where(has, w.sum(axis=2), 1.0)
        c1 = (w * x1[:, None, :]).sum(axis=2) / wsum
        c2 = (w * x2[:, None, :]).sum(axis=2) / wsum
        frac = w.sum(axis=2) / np.diff(bd)[None, :]  # open fraction of the target pair's width
        mid, half = 0.5 * (c1 + c2), 0.5 * (c2 - c1) * np.clip(frac, 0.0, 1.0)
        t1, t2 = mid - half, mid + half
    else:
        raise InputError(f"unknown leaf resampling mode '{mode}'; use 'cover' or 'area'", kind="conversion", field="mode")
    # park closed pairs at the middle of the segment's open field (0 when fully closed)
    any_open = is_open.any(axis=1)
    lo = np.where(is_open, x1, np.inf).min(axis=1)
    hi = np.where(is_open, x2, -np.inf).max(axis=1)
    park = np.where(any_open, 0.5 * (np.where(any_open, lo, 0) + np.where(any_open, hi, 0)), 0.0)[:, None]
    t1 = np.where(has, t1, park - 0.5 * min_gap_mm)
    t2 = np.where(has, t2, park + 0.5 * min_gap_mm)
    # minimum gap, then travel limits
    gap = t2 - t1
    widen = np.clip(min_gap_mm - gap, 0.0, None) * 0.5
    t1, t2 = t1 - widen, t2 + widen
    t1 = np.clip(t1, min_position_mm, max_position_mm - min_gap_mm)
    t2 = np.clip(t2, t1 + min_gap_mm, max_position_mm)
    if squeeze:
        return t1[0], t2[0]
    return t1, t2


def open_area_mm2(x1_mm: np.ndarray, x2_mm: np.ndarray, boundaries_mm: Sequence[float], open_tol_mm: float = 1e-6) -> np.ndarray:
    """Open area of apertures (mm² at the isocenter): Σ_pairs max(x2 - x1, 0) x leaf width.

    Pairs with a gap at or below ``open_tol_mm`` count as closed. Shape ``(segments,)``.
    """
    x1, x2 = np.atleast_2d(np.asarray(x1_mm, float)), np.atleast_2d(np.asarray(x2_mm, float))
    gap = x2 - x1
    gap = np.where(gap > open_tol_mm, gap, 0.0)
    return gap @ np.diff(np.asarray(boundaries_mm, float))


class LeafResampleRequest(BaseModel):
    """Payload of the ``leaf_resample`` conversion."""

    model_config = ConfigDict(extra="forbid")

    plan: Plan
    source_leaf_boundaries_mm: list[float] = Field(description="leaf boundaries of the machine the plan was made for (N+1, mm)")
    mode: Literal["cover", "area"] = "cover"
    closed_gap_tol_mm: float = Field(default=1.0, ge=0, description="source pairs with a gap at or below this are closed")


class ConversionResult(BaseModel):
    plan: Plan
    machine: str
    source_open_area_mm2: float = Field(description="total open area x MU of the source plan (mm²·MU)")
    target_open_area_mm2: float = Field(description="total open area x MU of the converted plan (mm²·MU)")

    @property
    def area_ratio(self) -> float:
        return self.target_open_area_mm2 / self.source_open_area_mm2 if self.source_open_area_mm2 > 0 else 0.0


def _clip_jaws(jaws: tuple[float, float] | None, model) -> tuple[float, float] | None:
    if model is None:
        return None
    if jaws is None:
        return (model.min_mm, model.max_mm)
    return (float(np.clip(jaws[0], model.min_mm, model.max_mm)), float(np.clip(jaws[1], model.min_mm, model.max_mm)))


def leaf_resample(payload: LeafResampleRequest | dict, machine: MachineModel) -> ConversionResult:
    """Convert every segment of a plan onto ``machine``'s MLC geometry (MU unchanged).

    Jaws are kept (clipped to the target's jaw travel) where the target has them and dropped
    where it has none. Reports the MU-weighted open area before and after.
    """
    req = payload if isinstance(payload, LeafResampleRequest) else LeafResampleRequest.model_validate(payload)
    mlc = machine.mlc
    src_b = req.source_leaf_boundaries_mm
    beams, a_src, a_dst = [], 0.0, 0.0
    for beam in req.plan.beams:
        if not beam.segments:
            beams.append(beam.model_copy(deep=True))
            continue
        x1 = np.array([s.x1_mm for s in beam.segments], float)
        x2 = np.array([s.x2_mm for s in beam.segments], float)
        mu = np.array([s.mu for s in beam.segments], float)
        x2 = np.where(x2 - x1 > req.closed_gap_tol_mm, x2, x1)  # nearly closed source pairs count as closed
        n1, n2 = resample_leaves(
            x1, x2, src_b, mlc.leaf_boundaries_mm, mode=req.mode, min_gap_mm=mlc.min_gap_mm,
            min_position_mm=mlc.min_position_mm, max_position_mm=mlc.max_position_mm,
        )
        a_src += float(open_area_mm2(x1, x2, src_b) @ mu)
        a_dst += float(open_area_mm2(n1, n2, mlc.leaf_boundaries_mm, mlc.min_gap_mm + 1e-9) @ mu)
        segs = [
            Segment(x1_mm=n1[i].tolist(), x2_mm=n2[i].tolist(), mu=float(mu[i]),
                    jaw_x_mm=_clip_jaws(s.jaw_x_mm, machine.jaw_x), jaw_y_mm=_clip_jaws(s.jaw_y_mm, machine.jaw_y))
            for i, s in enumerate(beam.segments)
        ]
        beams.append(Beam(name=beam.name, number=beam.number, gantry_deg=beam.gantry_deg, collimator_deg=beam.collimator_deg,
                          couch_deg=beam.couch_deg, isocenter_mm=beam.isocenter_mm, segments=segs))
    plan = req.plan.model_copy(deep=True, update={"beams": beams, "machine": machine.name, "source_plan_id": req.plan.id})
    plan.id = Plan.model_fields["id"].default_factory()
    plan.notes = list(req.plan.notes) + [
        f"leaf_resample({req.mode}): {len(src_b) - 1} -> {mlc.num_pairs} leaf pairs ({mlc.name}); "
        f"open area x MU {a_src:.0f} -> {a_dst:.0f} mm2*MU"
    ]
    return ConversionResult(plan=plan, machine=machine.name, source_open_area_mm2=a_src, target_open_area_mm2=a_dst)


# --------------------------------------------------------------------------------------------
# conversion registry

ConversionFn = Callable[[Any, MachineModel], Any]
CONVERSIONS: dict[str, ConversionFn] = {"leaf_resample": leaf_resample}


def register_conversion(name: str) -> Callable[[ConversionFn], ConversionFn]:
    def deco(fn: ConversionFn) -> ConversionFn:
        CONVERSIONS[name] = fn
        return fn

    return deco


def resolve_conversion(spec: str | ConversionFn) -> ConversionFn:
    """A registry name, ``"pkg.module:function"``, ``"pkg.module.function"``, or a callable."""
    if callable(spec):
        return spec
    if spec in CONVERSIONS:
        return CONVERSIONS[spec]
    mod_name, sep, attr = spec.partition(":")
    if not sep:
        mod_name, _, attr = spec.rpartition(".")
    if not mod_name or not attr:
        raise InputError(f"unknown conversion '{spec}'; use one of {sorted(CONVERSIONS)} or 'package.module:function'", kind="conversion", field="conversion")
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot load conversion '{spec}': {exc}", kind="conversion", field="conversion") from None
    if not callable(fn):
        raise InputError(f"conversion '{spec}' is not a function", kind="conversion", field="conversion")
    return fn


def load_machine_model(name: str, config_dir: str | os.PathLike | None = None) -> MachineModel:
    """The MachineModel called ``name``: ``rayrt.dose.machines.get_machine`` (the machine library),
    or, with ``config_dir``, the YAML file in that folder whose ``name`` matches."""
    if config_dir is None:
        try:
            from rayrt.dose import machines as dose_machines  # type: ignore[import-not-found]
        except ImportError:
            dose_machines = None
        if dose_machines is not None and hasattr(dose_machines, "get_machine"):
            return dose_machines.get_machine(name)
    import yaml

    from rayrt.service.machines import _default_machines_dir

    folder = Path(config_dir) if config_dir is not None else _default_machines_dir()
    for path in sorted(folder.glob("*.y*ml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict) and data.get("name") == name:
            return load_machine(path)
    raise InputError(f"no machine named '{name}' in {folder}", kind="machine", field="machine", status=404)


# --------------------------------------------------------------------------------------------
# the actor

_MODEL_LOADS = 0  # per worker process: how many MachineModels this process has loaded


class ConversionWorkerImpl:
    """Body of :data:`ConversionWorker`: holds one machine model, converts payloads."""

    def __init__(self, machine: MachineModel | dict | str, conversion: str | ConversionFn = "leaf_resample", config_dir: str | None = None):
        global _MODEL_LOADS
        if isinstance(machine, MachineModel):
            self.machine = machine
        elif isinstance(machine, dict):
            self.machine = MachineModel.model_validate(machine)
        else:
            self.machine = load_machine_model(machine, config_dir)
        _MODEL_LOADS += 1
        self.conversion = conversion if isinstance(conversion, str) else getattr(conversion, "__name__", "callable")
        self._fn = resolve_conversion(conversion)
        self.calls = 0
        self.busy_s = 0.0

    def run(self, payload: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._fn(payload, self.machine)
        finally:
            self.calls += 1
            self.busy_s += time.perf_counter() - t0

    def info(self) -> dict:
        """Where this worker runs and what it did (for stats and tests)."""
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        return {
            "machine": self.machine.name,
            "conversion": self.conversion,
            "pid": os.getpid(),
            "node_id": ctx.get_node_id() if ctx else None,
            "actor_id": ctx.get_actor_id() if ctx else None,
            "calls": self.calls,
            "busy_s": self.busy_s,
            "model_loads_in_process": _MODEL_LOADS,
        }


ConversionWorker = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=1)(ConversionWorkerImpl)
"""The Ray actor: ``ConversionWorker.options(...).remote(machine_model, "leaf_resample")``."""


# --------------------------------------------------------------------------------------------
# pools


class _Pool:
    def __init__(self, machine: str, initial: int, maximum: int):
        self.machine = machine
        self.initial = initial
        self.maximum = maximum
        self.actors: list[Any] = []
        self.inflight: list[list[ray.ObjectRef]] = []
        self.last_used: list[float] = []
        self.submitted = 0
        self.grown = 0


class PoolStats(BaseModel):
    machine: str
    size: int
    max_size: int
    queued: int = Field(description="conversions submitted and not finished")
    submitted: int
    grown: int = Field(description="actors added on demand")


class ConversionPools:
    """One pool of conversion actors per target machine, growing with demand.

    Args:
        machines: ``{name: MachineModel}`` (the model is shipped to each actor once), or names
            (each actor loads its model by name: :func:`load_machine_model`).
        conversion: registry name or dotted path of ``fn(payload, machine) -> result``.
        settings: :class:`ConversionPoolSettings` or its dict (service config ``conversion_pool``).
        actor_options: Ray options for the actors, e.g. ``{"num_cpus": 1, "resources": {"worker": 0.01}}``
            (default: ``settings.actor_options``).
        start: create every machine's initial actors now (models load in the background);
            otherwise a pool starts on its first submit.

    Thread-safe: the ingress may submit from several threads.
    """

    def __init__(
        self,
        machines: Mapping[str, MachineModel] | Sequence[str],
        conversion: str = "leaf_resample",
        settings: ConversionPoolSettings | dict | None = None,
        actor_options: dict | None = None,
        start: bool = True,
        config_dir: str | None = None,
    ):
        self.settings = settings if isinstance(settings, ConversionPoolSettings) else ConversionPoolSettings.model_validate(settings or {})
        self.conversion = conversion
        resolve_conversion(conversion)  # fail early on a bad name
        self._models: dict[str, MachineModel | str] = dict(machines) if isinstance(machines, Mapping) else {m: m for m in machines}
        if not self._models:
            raise InputError("ConversionPools needs at least one machine", kind="machine")
        self._options = dict(actor_options if actor_options is not None else self.settings.actor_options)
        self._config_dir = config_dir
        self._lock = threading.Lock()
        self._pools: dict[str, _Pool] = {}
        if start:
            for name in self._models:
                self._pool(name)

    # -- internals (call with the lock held)
    def _pool(self, machine: str) -> _Pool:
        pool = self._pools.get(machine)
        if pool is None:
            if machine not in self._models:
                raise InputError(
                    f"no conversion pool for machine '{machine}'; known: {', '.join(sorted(self._models))}",
                    kind="machine", field="machine", status=404,
                )
            pool = _Pool(machine, self.settings.initial(machine), self.settings.maximum(machine))
            self._pools[machine] = pool
            for _ in range(pool.initial):
                self._add_actor(pool)
        return pool

    def _add_actor(self, pool: _Pool) -> None:
        model = self._models[pool.machine]
        actor = ConversionWorker.options(**self._options).remote(model, self.conversion, self._config_dir)
        pool.actors.append(actor)
        pool.inflight.append([])
        pool.last_used.append(time.monotonic())

    @staticmethod
    def _prune(pool: _Pool) -> None:
        refs = [r for lst in pool.inflight for r in lst]
        if not refs:
            return
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if done:
            done_set = set(done)
            pool.inflight = [[r for r in lst if r not in done_set] for lst in pool.inflight]

    # -- API
    def submit(self, machine: str, payload: Any) -> ray.ObjectRef:
        """Queue one conversion for ``machine``; returns the result's ObjectRef (``await`` it or ``ray.get``).

        The pool grows by one actor first when the conversions queued (including this one)
        outnumber its actors and it is below its maximum size.
        """
        with self._lock:
            pool = self._pool(machine)
            self._prune(pool)
            queued = sum(len(lst) for lst in pool.inflight) + 1
            if queued > len(pool.actors) and len(pool.actors) < pool.maximum:
                self._add_actor(pool)
                pool.grown += 1
            i = min(range(len(pool.actors)), key=lambda k: (len(pool.inflight[k]), k))
            ref = pool.actors[i].run.remote(payload)
            pool.inflight[i].append(ref)
            pool.last_used[i] = time.monotonic()
            pool.submitted += 1
            return ref

    def convert(self, machine: str, payload: Any, timeout_s: float | None = None) -> Any:
        """Convert one payload and wait for the result."""
        return ray.get(self.submit(machine, payload), timeout=timeout_s)

    def map(self, machine: str, payloads: Sequence[Any], timeout_s: float | None = None) -> list[Any]:
        """Convert many payloads for one machine (spread over its pool), results in order."""
        refs = [self.submit(machine, p) for p in payloads]
        return ray.get(refs, timeout=timeout_s)

    def size(self, machine: str) -> int:
        with self._lock:
            return len(self._pool(machine).actors)

    def stats(self) -> list[PoolStats]:
        with self._lock:
            out = []
            for name, pool in self._pools.items():
                self._prune(pool)
                out.append(PoolStats(machine=name, size=len(pool.actors), max_size=pool.maximum,
                                     queued=sum(len(lst) for lst in pool.inflight), submitted=pool.submitted, grown=pool.grown))
            return out

    def actors(self, machine: str) -> list[Any]:
        with self._lock:
            return list(self._pool(machine).actors)

    def worker_info(self, machine: str) -> list[dict]:
        return ray.get([a.info.remote() for a in self.actors(machine)])

    def shrink_idle(self, idle_s: float = 300.0) -> int:
        """Remove actors idle for ``idle_s`` seconds beyond each pool's initial size; returns how many."""
        removed = 0
        now = time.monotonic()
        with self._lock:
            for pool in self._pools.values():
                self._prune(pool)
                k = len(pool.actors) - 1
                while k >= 0 and len(pool.actors) > pool.initial:
                    if not pool.inflight[k] and now - pool.last_used[k] >= idle_s:
                        ray.kill(pool.actors.pop(k))
                        pool.inflight.pop(k)
                        pool.last_used.pop(k)
                        removed += 1
                    k -= 1
        return removed

    def shutdown(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                for a in pool.actors:
                    ray.kill(a)
            self._pools.clear()


ConversionPoolsActor = ray.remote(num_cpus=0, max_concurrency=64, max_restarts=-1)(ConversionPools)
"""``ConversionPools`` as a threaded Ray actor, shared by the scheduler and every controlled
computer: ``ray.get(pools.convert.remote(machine, payload))`` (blocks one of its threads), or
``inner = ray.get(pools.submit.remote(machine, payload)); ray.get(inner)``."""

POOLS_NAME = "rayrt-conversion-pools"


def get_or_create_conversion_pools(name: str = POOLS_NAME, namespace: str | None = None, detached: bool = True, actor_options: dict | None = None, **kwargs: Any):
    """The named :data:`ConversionPoolsActor` (created on first use; ``kwargs`` go to ConversionPools).

    Without ``machines`` in ``kwargs`` it makes a pool for every treatment machine of the
    library (:func:`rayrt.service.machines.machine_names`); each worker loads its model by name.
    """
    opts = dict(actor_options or {})
    opts.update(name=name, get_if_exists=True)
    if namespace:
        opts["namespace"] = namespace
    if detached:
        opts["lifetime"] = "detached"
    if "machines" not in kwargs:
        from rayrt.service.machines import machine_names

        kwargs["machines"] = machine_names()
    return ConversionPoolsActor.options(**opts).remote(**kwargs)

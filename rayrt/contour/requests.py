"""Delineation requests: one pydantic model per method, one dispatch entry point.

``ContourRequest`` is a discriminated union on ``method``::

    auto | grow | interpolate | margin | boolean | ring | polygons | pet_threshold | edit

:func:`rayrt.contour.structureset.apply_request` applies one request to a
:class:`~rayrt.contour.structureset.StructureSet` (or to a loaded :class:`rayrt.imaging.study.Study`)
and returns the summaries of the structures it created or changed. It is the core API behind
``rayrt contour ...`` and
``POST /patients/{id}/structures``. A request either succeeds completely or raises
:class:`~rayrt.domain.errors.InputError` and leaves every existing structure untouched.

Coordinates are DICOM patient coordinates (LPS, mm): x to the patient's left, y posterior,
z superior. Margins are in mm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from rayrt.contour.config import ContourConfig
from rayrt.contour.morphology import Margins
from rayrt.domain.errors import InputError, first_error
from rayrt.domain.patient import Structure, StructureKind

if TYPE_CHECKING:  # pragma: no cover
    from rayrt.contour.structureset import StructureSet

Vec3 = tuple[float, float, float]
Colour = tuple[
    Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)]
]
Polygon = Annotated[
    list[Vec3], Field(min_length=3, description="closed planar polygon, (x, y, z) LPS mm, first point not repeated")
]


class BoxMM(BaseModel):
    """Axis-aligned LPS box (mm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_mm: Vec3
    max_mm: Vec3

    @model_validator(mode="after")
    def _ordered(self) -> "BoxMM":
        if any(a >= b for a, b in zip(self.min_mm, self.max_mm)):
            raise ValueError(f"box min {self.min_mm} must be below max {self.max_mm} on every axis")
        return self

    def as_tuple(self) -> tuple[Vec3, Vec3]:
        return self.min_mm, self.max_mm


class PostProcess(BaseModel):
    """Optional clean-up applied to a new structure, in this order: fill holes, smooth, crop."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fill_holes: Literal["none", "slice", "3d"] = "none"
    smooth_sigma_mm: float = Field(default=0.0, ge=0, le=20, description="Gaussian outline smoothing (mm); 0 = off")
    crop_to: str | None = Field(default=None, description="cut the structure to this one, e.g. 'External'")
    crop_inside_mm: float = Field(default=0.0, ge=0, le=100, description="...and this far inside its surface (mm)")


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Creates(_Base):
    name: str = Field(min_length=1, max_length=64, description="name of the structure to create (TG-263)")
    kind: StructureKind | None = Field(
        default=None, description="default: from the name (GTV/CTV/PTV... -> target, else organ)"
    )
    colour: Colour | None = None
    overwrite: bool = Field(default=False, description="replace an existing structure of that name")
    post: PostProcess = PostProcess()


class AutoRequest(_Base):
    """Automatic External, lungs, bones and air cavities (CT; External only on MR/PET)."""

    method: Literal["auto"] = "auto"
    structures: list[Literal["body", "lungs", "bones", "cavities"]] | None = Field(
        default=None,
        min_length=1,
        description="default: every structure the image supports (lungs skipped, with a note, when there are none)",
    )
    image: str | None = Field(default=None, description="image series key; default the primary image")
    config: ContourConfig | None = Field(
        default=None, description="settings; default the structure set's (logged resolved)"
    )
    overwrite: bool = True


class GrowRequest(_Creates):
    """Seeded region growing in an intensity window."""

    method: Literal["grow"] = "grow"
    seed_mm: Vec3
    window: tuple[float, float] = Field(description="[lo, hi] in the image's unit (HU for CT)")
    box_mm: BoxMM | None = None
    image: str | None = None
    connectivity: int | None = Field(default=None, ge=1, le=3)
    max_fraction_of_body: float | None = Field(default=None, gt=0, le=1)


class InterpolateRequest(_Creates):
    """Shape-based interpolation between contours drawn on a few slices.

    Either ``contours`` (polygons on the key slices) or an existing sparse structure ``name``.
    """

    method: Literal["interpolate"] = "interpolate"
    kind: StructureKind | None = Field(default=None, description="default: the drawn structure's kind, else organ")
    contours: list[Polygon] | None = None
    key_slices_z_mm: list[float] | None = Field(
        default=None, description="which drawn slices are keys; default every drawn slice"
    )


class MarginRequest(_Creates):
    """Expansion or contraction of ``source`` into ``name`` (e.g. CTV -> PTV)."""

    method: Literal["margin"] = "margin"
    kind: StructureKind | None = Field(default=None, description="default: the source's kind")
    source: str
    margin_mm: float | None = Field(default=None, ge=0, le=200, description="isotropic margin (mm)")
    margins: Margins | None = Field(default=None, description="per-direction margins (mm)")
    contract: bool = False

    @model_validator(mode="after")
    def _one_margin(self) -> "MarginRequest":
        if (self.margin_mm is None) == (self.margins is None):
            raise ValueError("give exactly one of margin_mm (isotropic) or margins (per direction)")
        return self

    def resolved_margins(self) -> Margins:
        if self.margins is not None:
            return self.margins
        assert self.margin_mm is not None  # exactly one of margin_mm / margins (_one_margin)
        return Margins.isotropic(float(self.margin_mm))


class BooleanRequest(_Creates):
    """union / intersection of a+b, or subtraction (union of a) minus (union of b)."""

    method: Literal["boolean"] = "boolean"
    kind: StructureKind | None = Field(default=None, description="default: the first input's kind")
    operation: Literal["union", "intersection", "subtraction"]
    a: list[str] = Field(min_length=1)
    b: list[str] = Field(default_factory=list)


class RingRequest(_Creates):
    """Ring between ``inner_mm`` and ``outer_mm`` around ``source`` (cropped to ``post.crop_to``)."""

    method: Literal["ring"] = "ring"
    kind: StructureKind = StructureKind.other
    source: str
    inner_mm: float = Field(default=0.0, ge=0, le=200)
    outer_mm: float = Field(gt=0, le=300)


class PolygonsRequest(_Creates):
    """A new structure from manual polygons (one or more per slice; even-odd: holes inside)."""

    method: Literal["polygons"] = "polygons"
    contours: list[Polygon] = Field(min_length=1)


class PetThresholdRequest(_Creates):
    """PET-avid target: SUV >= ``suv`` or >= ``percent_of_max`` % of the SUVmax in ``box_mm``."""

    method: Literal["pet_threshold"] = "pet_threshold"
    kind: StructureKind = StructureKind.target
    image: str | None = Field(default=None, description="PET series key; default the first PET image")
    box_mm: BoxMM | None = None
    suv: float | None = Field(default=None, gt=0)
    percent_of_max: float | None = Field(default=None, gt=0, lt=100)
    connected_to_max: bool | None = None

    @model_validator(mode="after")
    def _one_threshold(self) -> "PetThresholdRequest":
        if self.suv is not None and self.percent_of_max is not None:
            raise ValueError("give an absolute SUV or a percentage of SUVmax, not both")
        return self


class EditRequest(_Base):
    """Edit one structure: redraw/clear slices, delete, rename, recolour, re-kind, fill holes, smooth, crop."""

    method: Literal["edit"] = "edit"
    structure: str
    action: Literal["replace_slice", "delete", "rename", "recolour", "set_kind", "fill_holes", "smooth", "crop"]
    contours: list[Polygon] = Field(default_factory=list, description="replace_slice: the new polygons of the slice(s)")
    z_mm: list[float] = Field(
        default_factory=list, description="replace_slice: slices to clear when no polygon is given"
    )
    new_name: str | None = Field(default=None, min_length=1, max_length=64)
    colour: Colour | None = None
    kind: StructureKind | None = None
    fill_holes: Literal["slice", "3d"] = "slice"
    sigma_mm: float = Field(default=1.5, gt=0, le=20)
    crop_to: str = "External"
    crop_inside_mm: float = Field(default=0.0, ge=0, le=100)

    @model_validator(mode="after")
    def _needs(self) -> "EditRequest":
        if self.action == "rename" and not self.new_name:
            raise ValueError("rename needs new_name")
        if self.action == "recolour" and self.colour is None:
            raise ValueError("recolour needs colour (r, g, b)")
        if self.action == "set_kind" and self.kind is None:
            raise ValueError("set_kind needs kind")
        return self


ContourRequest = Annotated[
    Union[
        AutoRequest,
        GrowRequest,
        InterpolateRequest,
        MarginRequest,
        BooleanRequest,
        RingRequest,
        PolygonsRequest,
        PetThresholdRequest,
        EditRequest,
    ],
    Field(discriminator="method"),
]
CONTOUR_REQUEST_ADAPTER: TypeAdapter = TypeAdapter(ContourRequest)


def parse_request(data: dict[str, Any] | str | bytes) -> BaseModel:
    """Validate a request from JSON text or a decoded JSON object; InputError on a bad request."""
    from pydantic import ValidationError

    try:
        if isinstance(data, (str, bytes)):
            return CONTOUR_REQUEST_ADAPTER.validate_json(data)
        return CONTOUR_REQUEST_ADAPTER.validate_python(data)
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise InputError(
            f"invalid contour request: {loc}: {msg}", kind="contour", field=loc or None, status=422
        ) from exc


class StructureSummary(BaseModel):
    """What a delineation produced (one line of the CLI summary, one item of the HTTP answer)."""

    name: str
    kind: StructureKind
    volume_cc: float = Field(ge=0)
    num_voxels: int = Field(ge=0)
    colour: tuple[int, int, int]
    source: str = Field(description="the method that last changed it")
    deleted: bool = False


# ------------------------------------------------------------------------------ execution
class Output(BaseModel):
    """One structure written by a request (mask held outside pydantic validation)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    structure: Structure
    mask: Any  # np.ndarray[bool]
    replaces: str | None = None  # name of the structure this output replaces (rename/edit)
    fresh: bool = True  # a new structure (log restarts) rather than an edit of one


class Execution(BaseModel):
    """Result of running a request, before it is committed to the structure set."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    inputs: list[str] = Field(default_factory=list)
    outputs: list[Output] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    resolved: dict[str, Any] | None = None  # the request as logged, with defaults resolved
    notes: list[str] = Field(default_factory=list)


_DEFAULT_COLOURS = {
    StructureKind.target: (255, 0, 0),
    StructureKind.organ: (0, 200, 255),
    StructureKind.external: (0, 255, 0),
    StructureKind.support: (160, 160, 160),
    StructureKind.other: (255, 255, 0),
}


def _post(ss: "StructureSet", mask: np.ndarray, post: PostProcess) -> tuple[np.ndarray, list[str]]:
    from rayrt.contour import morphology as mo
    from rayrt.contour.semiauto import crop

    used: list[str] = []
    if post.fill_holes == "slice":
        mask = mo.fill_holes_per_slice(mask)
    elif post.fill_holes == "3d":
        mask = mo.fill_holes_3d(mask)
    if post.smooth_sigma_mm > 0:
        mask = mo.smooth(mask, ss.grid, post.smooth_sigma_mm)
    if post.crop_to:
        mask = crop(mask, ss.require(post.crop_to), ss.grid, post.crop_inside_mm)
        used.append(post.crop_to)
    return mask, used


def _created(
    ss: "StructureSet",
    req: _Creates,
    mask: np.ndarray,
    method: str,
    inputs: list[str],
    kind: StructureKind | None = None,
) -> Execution:
    mask, used = _post(ss, mask, req.post)
    if not mask.any():
        raise InputError(
            f"the {method} result for {req.name!r} is empty; check the inputs (seed, window, margins, box, structures)",
            kind="contour",
        )
    if req.name in ss and not req.overwrite:
        raise InputError(
            f"structure {req.name!r} already exists; choose another name or set overwrite",
            kind="contour",
            field="name",
            status=409,
        )
    kind = kind or req.kind or StructureKind.from_dicom(None, req.name)
    colour = req.colour or (ss.structure(req.name).colour if req.name in ss else _DEFAULT_COLOURS[kind])
    st = Structure(name=req.name, kind=kind, colour=colour, source=method)
    return Execution(inputs=inputs + used, outputs=[Output(structure=st, mask=mask)])


def _exec_auto(ss: "StructureSet", req: AutoRequest) -> Execution:
    from rayrt.contour.automatic import auto_contour

    cfg = req.config or ss.config
    image, modality = ss.image_for(req.image)
    strict = req.structures is not None
    wanted = req.structures if req.structures is not None else ["body", "lungs", "bones", "cavities"]
    order = [t for t in ("body", "lungs", "bones", "cavities") if t in wanted]
    body = None
    inputs: list[str] = []
    if "body" not in order and cfg.body.name in ss:
        body = ss.mask(cfg.body.name)
        inputs.append(cfg.body.name)
    notes: list[str] = []
    results = auto_contour(image, modality, tuple(order), cfg, body=body, strict=strict, notes=notes)
    outs = []
    for name, kind, colour, mask in results:
        if image.grid is not ss.grid and not image.grid.same_geometry(ss.grid):
            mask = ss.to_primary_grid(mask, image)
        if name in ss and not req.overwrite:
            raise InputError(
                f"structure {name!r} already exists; set overwrite to replace it",
                kind="contour",
                field="name",
                status=409,
            )
        if not mask.any():
            notes.append(f"{name}: nothing found, not created")  # e.g. no air cavity, no bone
            continue
        outs.append(Output(structure=Structure(name=name, kind=kind, colour=colour, source="auto"), mask=mask))
    resolved = req.model_dump(mode="json")
    resolved["config"] = cfg.model_dump(mode="json")
    return Execution(inputs=inputs, outputs=outs, resolved=resolved, notes=notes)


def _exec_grow(ss: "StructureSet", req: GrowRequest) -> Execution:
    from rayrt.contour.semiauto import region_grow

    image, _ = ss.image_for(req.image)
    g = ss.config.grow
    body_name = ss.config.body.name
    body = ss.mask(body_name) if body_name in ss and image.grid.same_geometry(ss.grid) else None
    mask = region_grow(
        image,
        req.seed_mm,
        req.window,
        req.box_mm.as_tuple() if req.box_mm else None,
        connectivity=req.connectivity or g.connectivity,
        body=body,
        max_fraction_of_body=req.max_fraction_of_body or g.max_fraction_of_body,
        max_border_faces=g.max_border_faces,
    )
    if not image.grid.same_geometry(ss.grid):
        mask = ss.to_primary_grid(mask, image)
    ex = _created(ss, req, mask, "grow", [])
    resolved = req.model_dump(mode="json")
    resolved.update(
        connectivity=req.connectivity or g.connectivity,
        max_fraction_of_body=req.max_fraction_of_body or g.max_fraction_of_body,
    )
    ex.resolved = resolved
    return ex


def _exec_interpolate(ss: "StructureSet", req: InterpolateRequest) -> Execution:
    from rayrt.contour.manual import polygon_slices, rasterize
    from rayrt.contour.semiauto import interpolate_slices

    inputs: list[str] = []
    if req.contours:
        contours = [np.asarray(c, dtype=float) for c in req.contours]
        sparse = rasterize(contours, ss.grid)
        keys = polygon_slices(contours, ss.grid)
    else:
        if req.name not in ss:
            raise InputError(
                f"interpolate: no structure {req.name!r} and no contours given; draw contours on a few slices first",
                kind="contour",
                field="name",
                status=404,
            )
        sparse = ss.mask(req.name)
        keys = None
        inputs.append(req.name)
    if req.key_slices_z_mm:
        keys = sorted(
            {
                int(round(float(ss.grid.world_to_index(np.array([ss.grid.origin[0], ss.grid.origin[1], z]))[0])))
                for z in req.key_slices_z_mm
            }
        )
    mask = interpolate_slices(sparse, ss.grid, keys)
    req2 = req if req.contours else req.model_copy(update={"overwrite": True})
    kind = req.kind or (ss.structure(req.name).kind if req.name in ss else StructureKind.from_dicom(None, req.name))
    ex = _created(ss, req2, mask, "interpolate", inputs, kind=kind)
    ex.resolved = req.model_dump(mode="json") | {"kind": kind.value}
    if not req.contours:
        ex.outputs[0].fresh = False  # an edit of the drawn structure: keep its log
    return ex


def _exec_margin(ss: "StructureSet", req: MarginRequest) -> Execution:
    from rayrt.contour.morphology import apply_margin

    src = ss.require(req.source)
    mask = apply_margin(src, ss.grid, req.resolved_margins(), contract_=req.contract)
    ex = _created(ss, req, mask, "margin", [req.source], kind=req.kind or ss.structure(req.source).kind)
    ex.resolved = req.model_dump(mode="json") | {"kind": ex.outputs[0].structure.kind.value}
    return ex


def _exec_boolean(ss: "StructureSet", req: BooleanRequest) -> Execution:
    from rayrt.contour.semiauto import boolean

    a = [ss.require(n) for n in req.a]
    b = [ss.require(n) for n in req.b]
    ex = _created(
        ss,
        req,
        boolean(req.operation, a, b),
        "boolean",
        list(req.a) + list(req.b),
        kind=req.kind or ss.structure(req.a[0]).kind,
    )
    ex.resolved = req.model_dump(mode="json") | {"kind": ex.outputs[0].structure.kind.value}
    return ex


def _exec_ring(ss: "StructureSet", req: RingRequest) -> Execution:
    from rayrt.contour.semiauto import ring

    mask = ring(ss.require(req.source), ss.grid, req.inner_mm, req.outer_mm)
    return _created(ss, req, mask, "ring", [req.source])


def _exec_polygons(ss: "StructureSet", req: PolygonsRequest) -> Execution:
    from rayrt.contour.manual import rasterize

    mask = rasterize([np.asarray(c, dtype=float) for c in req.contours], ss.grid)
    return _created(ss, req, mask, "polygons", [])


def _exec_pet(ss: "StructureSet", req: PetThresholdRequest) -> Execution:
    from rayrt.contour.semiauto import pet_threshold

    pet = ss.pet_image(req.image)
    pc = ss.config.pet
    percent = req.percent_of_max if (req.percent_of_max is not None or req.suv is not None) else pc.percent_of_max
    connected = pc.connected_to_max if req.connected_to_max is None else req.connected_to_max
    mask, thr, suvmax = pet_threshold(
        pet,
        ss.grid,
        req.box_mm.as_tuple() if req.box_mm else None,
        req.suv,
        percent if req.suv is None else None,
        connected,
    )
    ex = _created(ss, req, mask, "pet_threshold", [])
    resolved = req.model_dump(mode="json")
    resolved.update(percent_of_max=percent if req.suv is None else None, connected_to_max=connected)
    ex.resolved = resolved
    ex.notes.append(f"SUVmax {suvmax:.2f} in the box, threshold SUV {thr:.2f}")
    return ex


def _exec_edit(ss: "StructureSet", req: EditRequest) -> Execution:
    from rayrt.contour import morphology as mo
    from rayrt.contour.manual import replace_slices
    from rayrt.contour.semiauto import crop

    name = req.structure
    mask = ss.require(name)
    st = ss.structure(name)
    if req.action == "delete":
        return Execution(inputs=[name], deleted=[name])
    if req.action == "rename":
        new = req.new_name or name
        if new != name and new in ss:
            raise InputError(
                f"cannot rename {name!r} to {new!r}: that name is taken", kind="contour", field="new_name", status=409
            )
        return Execution(
            inputs=[name],
            outputs=[Output(structure=st.model_copy(update={"name": new}), mask=mask, replaces=name, fresh=False)],
        )
    if req.action == "recolour":
        return Execution(
            inputs=[name],
            outputs=[
                Output(structure=st.model_copy(update={"colour": req.colour}), mask=mask, replaces=name, fresh=False)
            ],
        )
    if req.action == "set_kind":
        return Execution(
            inputs=[name],
            outputs=[Output(structure=st.model_copy(update={"kind": req.kind}), mask=mask, replaces=name, fresh=False)],
        )
    inputs = [name]
    if req.action == "replace_slice":
        new_mask = replace_slices(mask, [np.asarray(c, dtype=float) for c in req.contours], ss.grid, req.z_mm)
    elif req.action == "fill_holes":
        new_mask = mo.fill_holes_per_slice(mask) if req.fill_holes == "slice" else mo.fill_holes_3d(mask)
    elif req.action == "smooth":
        new_mask = mo.smooth(mask, ss.grid, req.sigma_mm)
    else:  # crop
        new_mask = crop(mask, ss.require(req.crop_to), ss.grid, req.crop_inside_mm)
        inputs.append(req.crop_to)
    if not new_mask.any():
        raise InputError(f"the edit would leave {name!r} empty; delete the structure instead", kind="contour")
    return Execution(
        inputs=inputs,
        outputs=[Output(structure=st.model_copy(update={"source": "edit"}), mask=new_mask, replaces=name, fresh=False)],
    )


_EXECUTORS: dict[str, Callable[["StructureSet", Any], Execution]] = {
    "auto": _exec_auto,
    "grow": _exec_grow,
    "interpolate": _exec_interpolate,
    "margin": _exec_margin,
    "boolean": _exec_boolean,
    "ring": _exec_ring,
    "polygons": _exec_polygons,
    "pet_threshold": _exec_pet,
    "edit": _exec_edit,
}


def execute(ss: "StructureSet", request: BaseModel) -> Execution:
    """Run a request against a structure set without changing it."""
    method = getattr(request, "method", None)
    if method not in _EXECUTORS:
        raise InputError(
            f"unknown contour method {method!r}; use one of {sorted(_EXECUTORS)}", kind="contour", field="method"
        )
    ex = _EXECUTORS[method](ss, request)
    if ex.resolved is None:
        ex.resolved = request.model_dump(mode="json")
    return ex

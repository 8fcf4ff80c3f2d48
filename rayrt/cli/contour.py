"""``rayrt contour ...``: delineate structures on a patient folder and write an updated RTSTRUCT.

Every verb reads the folder with :func:`rayrt.imaging.study.load_study`, applies one
:class:`rayrt.contour.requests.ContourRequest` through the core's ``apply_request`` path, writes
all structures to ``--out`` (default ``DIR/RTSTRUCT_rayrt.dcm``) with the operations log beside
it (``RTSTRUCT_rayrt.contour_log.json``), and prints the structure summary. Input files are never
overwritten; a later command on the same folder continues from rayrt's previous output.
Coordinates are LPS mm (x to the patient's left, y posterior, z superior).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from rayrt.cli.app import app
from rayrt.domain.errors import InputError

contour_app = typer.Typer(
    name="contour",
    help="Delineate structures (automatic, semi-automatic, manual) and write an RTSTRUCT.",
    no_args_is_help=True,
)
app.add_typer(contour_app, name="contour")

DEFAULT_OUT = "RTSTRUCT_rayrt.dcm"

_DIR = typer.Argument(..., help="patient folder (or .zip) with the image series and any RTSTRUCT")
_OUT = typer.Option(None, "--out", help=f"RTSTRUCT to write (default DIR/{DEFAULT_OUT}); never an input file")
_USER = typer.Option("", "--user", help="who made the change (recorded in the operations log)")
_CONFIG = typer.Option(None, "--config", help="contour settings YAML (default configs/contour.yaml)")
_JSON = typer.Option(False, "--print-json", help="print the summary as JSON")


def _floats(text: str, n: int | None, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what}: expected comma-separated numbers, got {text!r}", kind="cli", field=what) from None
    if n is not None and len(vals) != n:
        raise InputError(f"{what}: expected {n} comma-separated numbers, got {text!r}", kind="cli", field=what)
    return vals


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}", kind="cli", field=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}", kind="cli", field=str(path)) from exc


def _box(text: str | None) -> dict | None:
    if not text:
        return None
    v = _floats(text, 6, "--box")
    return {"min_mm": v[:3], "max_mm": v[3:]}


def _post(crop_to: str | None, crop_inside_mm: float, smooth_mm: float, fill_holes: str) -> dict:
    return {
        "crop_to": crop_to,
        "crop_inside_mm": crop_inside_mm,
        "smooth_sigma_mm": smooth_mm,
        "fill_holes": fill_holes,
    }


def _is_rayrt_output(path: Path) -> bool:
    from rayrt.contour.structureset import log_path_for

    return path.is_file() and log_path_for(path).is_file()


def _raw_contours(folder: Path, name: str, previous: Path | None) -> list[list[tuple[float, float, float]]] | None:
    """The polygons of ROI ``name`` as stored in the folder's RTSTRUCT (rayrt's previous output first)."""
    from rayrt.imaging.dicom_io import read_rtstruct, scan_dicom

    if previous is not None:
        paths = [previous]
    else:
        files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
        paths = [h.path for h in scan_dicom(files, []) if h.modality == "RTSTRUCT"]
    for path in paths:
        for roi in read_rtstruct(path).rois:
            if roi.name == name and roi.contours:
                return [[tuple(map(float, pt)) for pt in c] for c in roi.contours]
    return None


def run_contour(
    folder: Path,
    request: dict | None,
    out: Path | None,
    user: str,
    config: Path | None,
    as_json: bool,
    rtstruct: Path | None = None,
    overwrite: bool = False,
) -> None:
    """Load, apply one request (or import an RTSTRUCT), write the RTSTRUCT + log, print the summary."""
    from rayrt.contour.config import load_contour_config
    from rayrt.contour.requests import parse_request
    from rayrt.contour.structureset import StructureSet, log_path_for
    from rayrt.imaging.study import load_study, structure_masks_from_rtstruct

    req = parse_request(request) if request is not None else None
    cfg = load_contour_config(config)
    folder = Path(folder)
    study = load_study(folder)
    base = folder if folder.is_dir() else folder.parent
    previous = base / DEFAULT_OUT
    if _is_rayrt_output(previous):
        # continue from rayrt's own previous result (it holds every structure, the originals included)
        from rayrt.imaging.dicom_io import read_rtstruct

        rs = read_rtstruct(previous)
        study.structures = structure_masks_from_rtstruct(
            rs, study.primary.grid, plane_spacing_mm=float(study.primary.grid.spacing[2])
        )
    if req is not None and req.method == "interpolate" and not req.contours and folder.is_dir():  # type: ignore[attr-defined]
        # RTSTRUCT import fills the gaps between sparse contour planes (slab semantics); interpolate
        # from the drawn polygons themselves instead
        raw = _raw_contours(folder, req.name, previous if _is_rayrt_output(previous) else None)  # type: ignore[attr-defined]
        if raw:
            req = req.model_copy(update={"contours": raw, "overwrite": True})
    ss = StructureSet.from_study(study, config=cfg)
    if _is_rayrt_output(previous):
        ss.attach_log(StructureSet.read_log(log_path_for(previous)))
    if req is not None:
        changed = ss.apply(req, user=user)
    else:
        assert rtstruct is not None
        if not Path(rtstruct).is_file():
            raise InputError(f"no such RTSTRUCT file: {rtstruct}", kind="cli", field="--rtstruct")
        changed = ss.import_rtstruct(rtstruct, overwrite=overwrite, user=user)

    out_path = Path(out) if out is not None else base / DEFAULT_OUT
    if out_path.exists() and not _is_rayrt_output(out_path):
        raise InputError(
            f"{out_path} exists and was not written by rayrt; rayrt never overwrites input files: give another --out",
            kind="cli",
            field="--out",
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ss.write_rtstruct(out_path)

    changed_names = {s.name for s in changed}
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "rtstruct": str(out_path),
                    "changed": [s.model_dump(mode="json") for s in changed],
                    "structures": [s.model_dump(mode="json") for s in ss.summaries()],
                },
                indent=2,
            )
        )
        return
    typer.echo(f"{'':1} {'name':<20} {'kind':<9} {'volume cc':>11} {'voxels':>10}  source")
    for s in ss.summaries():
        mark = "*" if s.name in changed_names else " "
        typer.echo(f"{mark} {s.name:<20} {s.kind.value:<9} {s.volume_cc:>11.2f} {s.num_voxels:>10d}  {s.source}")
    for s in changed:
        if s.deleted:
            typer.echo(f"- {s.name} deleted")
    notes = ss.history[-1].notes if ss.history else []
    for n in notes:
        typer.echo(f"note: {n}")
    typer.echo(f"wrote {out_path} (* = changed) and {log_path_for(out_path).name}")


@contour_app.command("auto")
def auto(
    folder: Path = _DIR,
    structures: Optional[str] = typer.Option(
        None, "--structures", help="any of body, lungs, bones, cavities (default: all the image supports)"
    ),
    image: Optional[str] = typer.Option(None, "--image", help="image series key (default the primary image)"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Automatic External, Lung_L/Lung_R, Bones and air cavities (CT; External only on MR/PET)."""
    run_contour(
        folder,
        {"method": "auto", "structures": _names(structures) if structures else None, "image": image},
        out,
        user,
        config,
        as_json,
    )


@contour_app.command("grow")
def grow(
    folder: Path = _DIR,
    seed: str = typer.Option(..., "--seed", help="seed point x,y,z (LPS mm)"),
    window: str = typer.Option(..., "--window", help="intensity window LO,HI (HU on CT)"),
    name: str = typer.Option("GTV", "--name", help="structure to create"),
    kind: Optional[str] = typer.Option(
        None, "--kind", help="target, organ, external, support or other (default from the name)"
    ),
    box: Optional[str] = typer.Option(None, "--box", help="bounding box x0,y0,z0,x1,y1,z1 (LPS mm)"),
    connectivity: Optional[int] = typer.Option(None, "--connectivity", help="1 = 6, 2 = 18, 3 = 26 neighbours"),
    image: Optional[str] = typer.Option(None, "--image", help="image series key (default the primary image)"),
    fill_holes: str = typer.Option("none", "--fill-holes", help="none, slice or 3d"),
    smooth_mm: float = typer.Option(0.0, "--smooth-mm", help="outline smoothing sigma (mm)"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Seeded region growing from a point in an intensity window."""
    win = _floats(window, 2, "--window")
    req = {
        "method": "grow",
        "name": name,
        "kind": kind,
        "seed_mm": _floats(seed, 3, "--seed"),
        "window": win,
        "box_mm": _box(box),
        "connectivity": connectivity,
        "image": image,
        "overwrite": overwrite,
        "post": _post(None, 0.0, smooth_mm, fill_holes),
    }
    run_contour(folder, req, out, user, config, as_json)


def _parse_directions(text: str) -> dict:
    keys = {"left", "right", "anterior", "posterior", "superior", "inferior"}
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise InputError(
                f"--mm-dir: expected direction=mm pairs like left=5,superior=10, got {part!r}",
                kind="cli",
                field="--mm-dir",
            )
        k, v = part.split("=", 1)
        k = k.strip().lower()
        if k not in keys:
            raise InputError(
                f"--mm-dir: unknown direction {k!r}; use {', '.join(sorted(keys))}", kind="cli", field="--mm-dir"
            )
        out[f"{k}_mm"] = _floats(v, 1, "--mm-dir")[0]
    return out


@contour_app.command("margin")
def margin(
    folder: Path = _DIR,
    source: str = typer.Option(..., "--from", help="structure to expand, e.g. CTV"),
    name: str = typer.Option(..., "--to", help="structure to create, e.g. PTV"),
    mm: Optional[float] = typer.Option(None, "--mm", help="isotropic margin (mm)"),
    mm_axis: Optional[str] = typer.Option(
        None, "--mm-axis", help="per-axis margins x,y,z (mm): left-right, ant-post, sup-inf"
    ),
    mm_dir: Optional[str] = typer.Option(
        None,
        "--mm-dir",
        help="per-direction margins, e.g. left=5,right=5,anterior=7,posterior=7,superior=10,inferior=10",
    ),
    contract: bool = typer.Option(False, "--contract", help="contract instead of expand"),
    crop_to: Optional[str] = typer.Option(None, "--crop-to", help="cut the result to this structure, e.g. External"),
    crop_inside_mm: float = typer.Option(0.0, "--crop-inside-mm", help="...this far inside its surface (mm)"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Expand or contract a structure by a margin in mm (isotropic, per axis or per direction)."""
    given = [x is not None for x in (mm, mm_axis, mm_dir)]
    if sum(given) != 1:
        raise InputError("give exactly one of --mm, --mm-axis or --mm-dir", kind="cli", field="--mm")
    req: dict[str, Any] = {
        "method": "margin",
        "source": source,
        "name": name,
        "contract": contract,
        "overwrite": overwrite,
        "post": _post(crop_to, crop_inside_mm, 0.0, "none"),
    }
    if mm is not None:
        req["margin_mm"] = mm
    elif mm_axis is not None:
        x, y, z = _floats(mm_axis, 3, "--mm-axis")
        req["margins"] = {
            "left_mm": x,
            "right_mm": x,
            "anterior_mm": y,
            "posterior_mm": y,
            "superior_mm": z,
            "inferior_mm": z,
        }
    else:
        req["margins"] = _parse_directions(mm_dir or "")
    run_contour(folder, req, out, user, config, as_json)


@contour_app.command("interpolate")
def interpolate(
    folder: Path = _DIR,
    name: str = typer.Option(..., "--name", help="structure drawn on a few slices (or to create from --polygons)"),
    polygons: Optional[Path] = typer.Option(
        None, "--polygons", help="JSON list of polygons [[x,y,z],...] on a few slices"
    ),
    kind: Optional[str] = typer.Option(
        None, "--kind", help="target, organ, external, support or other (default from the name)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Fill the slices between drawn slices by shape-based (signed distance) interpolation."""
    req: dict[str, Any] = {"method": "interpolate", "name": name, "kind": kind, "overwrite": overwrite}
    if polygons is not None:
        data = _read_json(polygons, "polygons file")
        req["contours"] = data.get("contours") if isinstance(data, dict) else data
    run_contour(folder, req, out, user, config, as_json)


@contour_app.command("boolean")
def boolean(
    folder: Path = _DIR,
    operation: str = typer.Option(..., "--op", help="union, intersection or subtraction"),
    a: str = typer.Option(..., "--a", help="structures A (comma-separated)"),
    b: str = typer.Option("", "--b", help="structures B (comma-separated); subtraction: A minus B"),
    name: str = typer.Option(..., "--to", help="structure to create"),
    kind: Optional[str] = typer.Option(None, "--kind"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Union, intersection or subtraction of structures."""
    req = {
        "method": "boolean",
        "operation": operation,
        "a": _names(a),
        "b": _names(b),
        "name": name,
        "kind": kind,
        "overwrite": overwrite,
    }
    run_contour(folder, req, out, user, config, as_json)


@contour_app.command("ring")
def ring(
    folder: Path = _DIR,
    source: str = typer.Option(..., "--from", help="structure to ring, e.g. PTV"),
    name: str = typer.Option(..., "--to", help="ring structure to create"),
    inner: float = typer.Option(0.0, "--inner", help="inner margin (mm)"),
    outer: float = typer.Option(..., "--outer", help="outer margin (mm)"),
    crop_to: Optional[str] = typer.Option(None, "--crop-to", help="cut to this structure, e.g. External"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Ring structure between an inner and an outer margin around a structure."""
    req = {
        "method": "ring",
        "source": source,
        "name": name,
        "inner_mm": inner,
        "outer_mm": outer,
        "overwrite": overwrite,
        "post": _post(crop_to, 0.0, 0.0, "none"),
    }
    run_contour(folder, req, out, user, config, as_json)


@contour_app.command("polygons")
def polygons(
    folder: Path = _DIR,
    json_file: Path = typer.Option(
        ..., "--json", help='JSON: a list of polygons [[x,y,z],...] (LPS mm) or {"contours": [...]}'
    ),
    name: str = typer.Option(..., "--name", help="structure to create"),
    kind: Optional[str] = typer.Option(
        None, "--kind", help="target, organ, external, support or other (default from the name)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """A structure from manual polygons (one or more per slice; a polygon inside another is a hole)."""
    data = _read_json(json_file, "polygons file")
    contours = data.get("contours") if isinstance(data, dict) else data
    req = {"method": "polygons", "name": name, "kind": kind, "contours": contours, "overwrite": overwrite}
    run_contour(folder, req, out, user, config, as_json)


@contour_app.command("pet")
def pet(
    folder: Path = _DIR,
    name: str = typer.Option("GTV_PET", "--name"),
    box: Optional[str] = typer.Option(None, "--box", help="box around the lesion x0,y0,z0,x1,y1,z1 (LPS mm)"),
    suv: Optional[float] = typer.Option(None, "--suv", help="absolute SUV threshold"),
    percent: Optional[float] = typer.Option(
        None, "--percent", help="threshold in % of the SUVmax in the box (default 40)"
    ),
    image: Optional[str] = typer.Option(None, "--image", help="PET series key (default the first PET series)"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """PET-avid target: SUV threshold (absolute or % of local SUVmax) mapped onto the CT grid."""
    req = {
        "method": "pet_threshold",
        "name": name,
        "box_mm": _box(box),
        "suv": suv,
        "percent_of_max": percent,
        "image": image,
        "overwrite": overwrite,
    }
    run_contour(folder, req, out, user, config, as_json)


@contour_app.command("edit")
def edit(
    folder: Path = _DIR,
    structure: str = typer.Option(..., "--structure", help="structure to edit"),
    delete: bool = typer.Option(False, "--delete"),
    rename: Optional[str] = typer.Option(None, "--rename", help="new name"),
    colour: Optional[str] = typer.Option(None, "--colour", help="r,g,b (0-255)"),
    slice_json: Optional[Path] = typer.Option(
        None, "--slice-json", help="JSON polygons replacing the contours of their slice(s)"
    ),
    clear_z: Optional[str] = typer.Option(None, "--clear-z", help="z positions (mm) of slices to clear"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Edit a structure: replace a slice's contours, delete, rename or recolour."""
    chosen = [delete, rename is not None, colour is not None, slice_json is not None or clear_z is not None]
    if sum(chosen) != 1:
        raise InputError("give exactly one of --delete, --rename, --colour, --slice-json/--clear-z", kind="cli")
    req: dict[str, Any] = {"method": "edit", "structure": structure}
    if delete:
        req["action"] = "delete"
    elif rename is not None:
        req.update(action="rename", new_name=rename)
    elif colour is not None:
        req.update(action="recolour", colour=[int(v) for v in _floats(colour, 3, "--colour")])
    else:
        data = _read_json(slice_json, "polygons file") if slice_json is not None else []
        req.update(
            action="replace_slice",
            contours=data.get("contours") if isinstance(data, dict) else data,
            z_mm=_floats(clear_z, None, "--clear-z") if clear_z else [],
        )
    run_contour(folder, req, out, user, config, as_json)


@contour_app.command("apply")
def apply(
    folder: Path = _DIR,
    request: Path = typer.Option(
        ..., "--request", help="a ContourRequest as JSON (the body of POST /patients/{id}/structures)"
    ),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Apply any contour request given as JSON (method: auto, grow, interpolate, margin, ...)."""
    run_contour(folder, _read_json(request, "request file"), out, user, config, as_json)


@contour_app.command("import")
def import_rtstruct(
    folder: Path = _DIR,
    rtstruct: Path = typer.Option(
        ..., "--rtstruct", help="an RTSTRUCT on the same frame of reference as the folder's image"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace structures of the same name"),
    out: Optional[Path] = _OUT,
    user: str = _USER,
    config: Optional[Path] = _CONFIG,
    as_json: bool = _JSON,
) -> None:
    """Import every structure of a whole RTSTRUCT (drawn elsewhere) into the folder's structure set."""
    run_contour(folder, None, out, user, config, as_json, rtstruct=rtstruct, overwrite=overwrite)

"""Hostile uploads (issue 15, "Measured: hostile uploads"): each refused with 413 / 422, how fast,
what it costs the service's memory, and whether /health stays up.

    .venv/bin/python scripts/bench/hostile.py [--out hostile.json]

A fresh local Ray + Serve + rayrt service (the product's settings). Sent as a signed-in clinician,
one after the other:

* a 600 MB body with its length declared, and the same streamed without a declared length;
* a deflated DICOM file of 4 MB whose dataset inflates to 4 GiB (a deflate bomb);
* a CT series of three slices at z = 0, 1 and 30,000.5 mm (30 m: 30,001 slices if resampled);
* a CT series whose headers claim 65535 x 65535 pixels;
* a zip of 100,000 entries.

For each: the status and message, the seconds until the answer, the ingress replica's and the
proxy's resident memory after it (growth against the start), and /health after it. Prints a table
and writes scripts/bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service as svc  # noqa: E402  (the service start / stop and process helpers of the service benchmark)
from common import RESULTS_DIR, machine_info, print_table, rss_mib, write_json  # noqa: E402

MB = 10**6


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _slices(case: Path, edit) -> bytes:
    """Three CT slices of the phantom, each changed by ``edit(ds, k)``, as a zip."""
    import pydicom

    out = {}
    for k, f in enumerate(sorted((case / "CT").iterdir())[:3]):
        ds = pydicom.dcmread(f)
        edit(ds, k)
        b = io.BytesIO()
        ds.save_as(b, enforce_file_format=True)
        out[f"CT{k}.dcm"] = b.getvalue()
    return _zip(out)


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian CT file whose dataset inflates to ``inflated_bytes``:
    a small dataset, then an OB Pixel Data element of that many zeros, compressed as it streams."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID, ds.Modality = CTImageStorage, generate_uid(), "BOMB", "CT"
    ds.Rows = ds.Columns = 512
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
    head = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(head, meta, enforce_standard=True)
    body = io.BytesIO()
    fp = pydicom.filebase.DicomFileLike(body)
    fp.is_little_endian, fp.is_implicit_VR = True, False  # the deflated stream is explicit VR little endian
    pydicom.filewriter.write_dataset(fp, ds)
    length = inflated_bytes - (inflated_bytes % 2)
    element = bytes.fromhex("e07f1000") + b"OB\x00\x00" + length.to_bytes(4, "little")  # (7FE0,0010) OB
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [b"\x00" * 128, b"DICM", head.getvalue(), comp.compress(body.getvalue() + element)]
    zeros = b"\x00" * (64 << 20)
    left = length
    while left:
        n = min(left, len(zeros))
        out.append(comp.compress(zeros[:n]))
        left -= n
    out.append(comp.flush())
    return b"".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="hostile.json")
    args = ap.parse_args()

    import httpx

    from rayrt.imaging.phantoms import write_tg119

    work = Path(tempfile.mkdtemp(prefix="rayrt-hostile-"))
    case = write_tg119(work / "tg119", 8.0)
    t = time.perf_counter()
    bomb = deflate_bomb(2**32 - 16)  # the largest even 32-bit element length: 4 GiB
    t_bomb = time.perf_counter() - t
    far = _slices(case, lambda ds, k: setattr(ds, "ImagePositionPatient", [0.0, 0.0, [0.0, 1.0, 30000.5][k]]))
    huge = _slices(case, lambda ds, k: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)))
    many = _zip({f"f{i:06d}.dcm": b"" for i in range(100_000)})

    def big_stream(total: int, head: bytes = b""):
        chunk = b"\x00" * (1 << 20)
        sent = 0
        if head:
            yield head
        while sent < total:
            n = min(len(chunk), total - sent)
            sent += n
            yield chunk[:n]

    url, settings, _, _ = svc._start_service(work / "data")
    headers = svc._headers(url)
    rows, res = [], {"machine": machine_info(), "bomb_file_bytes": len(bomb), "bomb_build_s": t_bomb, "cases": {}}
    try:
        pids = svc._serve_pids()
        rss0 = {k: rss_mib(p) for k, p in pids.items()}
        res["rss_mib_start"] = rss0
        cases = {
            "600 MB body, declared length": dict(
                content=big_stream(600 * MB),
                headers={"Content-Length": str(600 * MB), "Content-Type": "application/zip"},
            ),
            "600 MB file in a multipart body, streamed (no length)": dict(
                content=big_stream(
                    600 * MB,
                    b'--rayrt\r\nContent-Disposition: form-data; name="files"; filename="big.zip"\r\n'
                    b"Content-Type: application/zip\r\n\r\n",
                ),
                headers={"Content-Type": "multipart/form-data; boundary=rayrt"},
            ),
            f"deflate bomb ({len(bomb) / MB:.1f} MB -> 4 GiB)": dict(
                files=[("files", ("bomb.dcm", bomb, "application/dicom"))]
            ),
            "30 m three-slice series": dict(files=[("files", ("far.zip", far, "application/zip"))]),
            "65535 x 65535 header": dict(files=[("files", ("huge.zip", huge, "application/zip"))]),
            f"zip of 100,000 entries ({len(many) / MB:.1f} MB)": dict(
                files=[("files", ("many.zip", many, "application/zip"))]
            ),
        }
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            for name, kw in cases.items():
                t = time.perf_counter()
                try:
                    r = c.post("/patients", **kw)
                    status, message = r.status_code, r.json().get("message", "")[:110]
                except httpx.HTTPError as exc:  # the server may close while a refused body still streams
                    status, message = type(exc).__name__, str(exc)[:110]
                dt = time.perf_counter() - t
                rss = {k: rss_mib(p) for k, p in pids.items()}
                health = c.get("/health").status_code
                res["cases"][name] = {
                    "status": status,
                    "message": message,
                    "seconds": dt,
                    "rss_mib": rss,
                    "rss_growth_mib": {k: rss[k] - rss0[k] for k in rss},
                    "health_after": health,
                }
                growth = max(rss[k] - rss0[k] for k in rss)
                rows.append([name, status, f"{dt:.2f}", f"{growth:+.0f}", health, message])
            res["patients_stored"] = len(c.get("/patients").json()["patients"])
    finally:
        svc._stop_service(settings)
    print_table(
        ["upload", "status", "s", "max RSS growth (MiB)", "/health", "message"],
        rows,
        title=f"hostile uploads, one after the other (patients stored after: {res['patients_stored']})",
    )
    print("wrote", write_json(RESULTS_DIR / args.out, res))


if __name__ == "__main__":
    main()

"""Imports run on the cluster's compute, not in the ingress replica.

Reading DICOM builds volumes of up to a gigabyte (rayrt.imaging.dicom_io's voxel budget) and
inflates, extracts and resamples: work that must neither stall nor take down the replica that
answers every status call. :func:`import_remote` streams the uploaded files into the store
(``staging/uploads/<token>/``, never whole in memory), then one Ray task
(:data:`ServiceSettings.import_options`: by default ``num_cpus: 0``, so an upload never waits
behind planning tasks; on a cluster the Serve config adds ``resources: {worker: 0.001}`` to keep
it off the head node) reads them back from the store, imports the patient
(:func:`rayrt.service.intake.import_upload`) and removes the staged files. An InputError in the
task reaches the client as it would have from the ingress.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, BinaryIO

import ray

from rayrt.service.intake import import_upload
from rayrt.service.models import PatientSummary
from rayrt.service.remote import task_result
from rayrt.service.store import Store

__all__ = ["import_remote"]

UPLOADS = "staging/uploads"


def _import_staged(store: Store, token: str, names: list[str], max_files: int) -> PatientSummary:
    """The task: import the staged upload ``token`` (files ``00000``... named ``names``), then remove it."""
    base = f"{UPLOADS}/{token}"
    streams = [store.open_stream(f"{base}/{i:05d}") for i in range(len(names))]
    try:
        return import_upload(store, list(zip(names, streams)), max_files)
    finally:
        for s in streams:
            s.close()
        store.delete_dir(base)


_import_task = ray.remote(max_retries=0)(_import_staged)


async def import_remote(
    store: Store, files: list[tuple[str, BinaryIO]], max_files: int, options: dict[str, Any]
) -> PatientSummary:
    """Stage ``files`` in the store and import them in a Ray task (``options``: its Ray options)."""
    token = uuid.uuid4().hex

    def stage() -> None:
        try:
            for i, (_, stream) in enumerate(files):
                stream.seek(0)
                store.write_stream(f"{UPLOADS}/{token}/{i:05d}", stream)
        except BaseException:
            store.delete_dir(f"{UPLOADS}/{token}")
            raise

    await asyncio.to_thread(stage)  # off the event loop that answers status calls
    return await task_result(
        _import_task.options(**options).remote(store, token, [name for name, _ in files], max_files)
    )

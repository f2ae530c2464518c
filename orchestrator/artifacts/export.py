"""Exports of one artifact version: its source, the files its last run produced, and a
manifest, as a zip, a tar.gz or a folder; or as a commit in a project's repository.

Layout (the same in all three)::

    manifest.json         name, kind, language, entry, version, files with sha256, last run
    source/<path>         the version's files
    produced/<path>       what the version's last run wrote (as copied to the host)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import zipfile
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from core.errors import AlreadyExists, InvalidInput
from guest_agent.protocol.runs import SourceFile
from orchestrator.artifacts.tables import ArtifactRow, ArtifactRunRow, ArtifactVersionRow


class ExportFormat(StrEnum):
    ZIP = "zip"
    TAR = "tar"
    DIR = "dir"


SUFFIX = {ExportFormat.ZIP: ".zip", ExportFormat.TAR: ".tar.gz", ExportFormat.DIR: ""}


def file_bytes(source: SourceFile) -> bytes:
    return base64.b64decode(source.content) if source.base64 else source.content.encode()


def export_entries(artifact: ArtifactRow, version: ArtifactVersionRow,
                   last_run: ArtifactRunRow | None, produced_dir: Path | None,
                   ) -> dict[str, bytes]:
    """Every file of the export by its path in it, ``manifest.json`` included."""
    entries = {f"source/{f.path}": file_bytes(f) for f in version.sources()}
    if produced_dir is not None and produced_dir.is_dir():
        for path in sorted(produced_dir.rglob("*")):
            if path.is_file():
                entries[f"produced/{path.relative_to(produced_dir).as_posix()}"] = path.read_bytes()
    manifest = {
        "name": artifact.name, "kind": artifact.kind, "language": artifact.language,
        "entry": artifact.entry, "version": version.number, "message": version.message,
        "version_created_at": version.created_at.isoformat(),
        "exported_at": datetime.now(UTC).isoformat(),
        "files": {path: hashlib.sha256(data).hexdigest() for path, data in entries.items()},
        "last_run": None if last_run is None else {
            "id": last_run.id, "outcome": last_run.outcome, "exit_code": last_run.exit_code,
            "limit": last_run.limit, "duration_s": last_run.duration_s,
            "result": json.loads(last_run.result) if last_run.result else None},
    }  # fmt: skip
    entries["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    return entries


def write_export(entries: dict[str, bytes], fmt: ExportFormat, dest: Path) -> Path:
    """Write the entries as ``fmt`` at ``dest`` (never over something that exists)."""
    if dest.exists():
        raise AlreadyExists(f"{dest} exists already: name another with -o")
    if not dest.parent.is_dir():
        raise InvalidInput(f"no folder {dest.parent} to export into")
    if fmt is ExportFormat.ZIP:
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
            for path, data in entries.items():
                archive.writestr(path, data)
    elif fmt is ExportFormat.TAR:
        with tarfile.open(dest, "w:gz") as archive:
            for path, data in entries.items():
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = len(data), 0o644, int(datetime.now().timestamp())
                archive.addfile(info, io.BytesIO(data))
    else:
        for path, data in entries.items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return dest

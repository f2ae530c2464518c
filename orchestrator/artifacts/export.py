"""Exports of one artifact version: its source, the files its last run produced, and a
manifest, as a zip, a tar.gz or a folder; or as a commit in a project's repository.

``html`` is for static web artifacts only: the page with its files built in
(``single_html``). Layout of the others::

    manifest.json         name, kind, language, entry, version, files with sha256, last run
    source/<path>         the version's files
    produced/<path>       what the version's last run wrote (as copied to the host)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
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
    HTML = "html"  # a static web artifact as one self-contained page


SUFFIX = {ExportFormat.ZIP: ".zip", ExportFormat.TAR: ".tar.gz", ExportFormat.DIR: "",
          ExportFormat.HTML: ".html"}


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
    if fmt is ExportFormat.HTML:
        ((_, page),) = entries.items()
        dest.write_bytes(page)
    elif fmt is ExportFormat.ZIP:
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


_SCRIPT_SRC = re.compile(r'<script\b([^>]*?)\bsrc=["\']([^"\':]+)["\']([^>]*)>\s*</script>', re.I)
_STYLESHEET = re.compile(r'<link\b[^>]*?\bhref=["\']([^"\':]+\.css)["\'][^>]*>', re.I)
_FETCH_SHIM = """<script>/* Somnus: this page's files, for fetch() without a server */
(() => {{
  const files = {files};
  const fetched = window.fetch;
  window.fetch = (url, options) => {{
    const name = String(url).replace(/^\\.\\//, "");
    return name in files
      ? Promise.resolve(new Response(Uint8Array.from(atob(files[name]), c => c.charCodeAt(0)),
                                     {{headers: {{"Content-Type": "application/octet-stream"}}}}))
      : fetched(url, options);
  }};
}})();
</script>"""


def single_html(entry: str, files: dict[str, bytes]) -> bytes:
    """A static web artifact as one HTML file that works opened from disk: its local
    scripts and stylesheets inlined, and every other file of it served to ``fetch``."""
    if entry not in files:
        raise InvalidInput(f"entry '{entry}' is not one of the artifact's files")
    page = files[entry].decode(errors="replace")
    used: set[str] = set()

    def script(m: re.Match[str]) -> str:
        name = m[2].removeprefix("./")
        if name not in files:
            return m[0]
        used.add(name)
        attributes = f"{m[1]}{m[3]}".strip()
        return (f"<script{' ' + attributes if attributes else ''}>"
                f"{files[name].decode(errors='replace')}</script>")

    def style(m: re.Match[str]) -> str:
        name = m[1].removeprefix("./")
        if name not in files:
            return m[0]
        used.add(name)
        return f"<style>{files[name].decode(errors='replace')}</style>"

    page = _STYLESHEET.sub(style, _SCRIPT_SRC.sub(script, page))
    rest = {name: base64.b64encode(data).decode() for name, data in sorted(files.items())
            if name != entry and name not in used}
    shim = _FETCH_SHIM.format(files=json.dumps(rest)) if rest else ""
    head = re.search(r"<head[^>]*>", page, re.I)
    at = head.end() if head else 0
    return (page[:at] + shim + page[at:]).encode()

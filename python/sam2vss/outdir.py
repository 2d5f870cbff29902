"""The output folder of `refine`: where it may be, who writes it, and what it records.

- `guard_output`: --out may not equal, lie inside or contain an input folder (base labels, the
  dataset's data/, a frame folder), nor equal or contain the dataset root or a video file's
  folder; a sibling such as S/refined beside S/pred_base is fine. `check_writable` probes the
  target with a temporary file. Both run before anything is written (exit 2 at the CLI).
- `OutputLock`: OUT/.lock (pid, host, start time) keeps one writer per folder; a lock whose
  process is gone (same host) is stale and taken over.
- `Manifest`: OUT/manifest.json (schema 2): the configuration hash and the settings it covers
  (so a mismatch names the fields that differ), the run header, and per video its status, the
  digest of its outputs and the digest of its input record. The record itself (size, mtime and
  sha256 of each input file's bytes, what resume keys on) is OUT/.inputs/<video>.json: the
  manifest is rewritten after every video and must stay small. Manifests written before the
  schema key existed are schema 1.
- `supersede`: --overwrite never deletes; another configuration's videos move to
  OUT/.superseded/<time>/, so a folder holds one configuration.

The decision to know: OUT/<video> only ever appears complete. A video is written in
OUT/.partial/<video> and renamed into place (`publish`), so a failure, Ctrl-C or kill -9 leaves
nothing half-written where `eval` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sam2vss.data import DataError
from sam2vss.sinks import atomic_write, write_json

log = logging.getLogger(__name__)

SCHEMA = 2  # 1: the landed manifests (no "schema" key); 2: + settings, run header, input records
PARTIAL = ".partial"  # OUT/.partial/<video>: a video being written
SUPERSEDED = ".superseded"  # OUT/.superseded/<time>/: what --overwrite set aside
INPUTS = ".inputs"  # OUT/.inputs/<video>.json: the input record of a done video


class OutputError(DataError):
    """--out or --json refused before any work; the message names the flag, the path and the fix."""


# ------------------------------------------------------------------ guard and preflight
@dataclass(frozen=True)
class Input:
    """An input folder that --out must keep clear of. `tree`: --out may neither equal it, lie
    inside it nor contain it (label folders, data/); otherwise (the dataset root, a video file's
    folder) --out may lie inside it, as a sibling of the folders it holds."""

    what: str  # how the error names it, e.g. "the --pred folder"
    path: Path
    tree: bool = True


def guard_output(
    out: Path, inputs: Iterable[Input], command: str = "refine", suggestion: str = "refined"
) -> None:
    """Refuse an --out that would mix outputs with inputs (refine writes OUT/<video>/*.png, viz
    OUT/<video>/*.png and .mp4); the error names `command` and suggests a sibling `suggestion`."""
    o = Path(out).resolve()
    for item in inputs:
        p = Path(item.path).resolve()
        if o == p:
            problem = "is"
        elif item.tree and p in o.parents:
            problem = "lies inside"
        elif o in p.parents:
            problem = "contains"
        else:
            continue
        beside = p / suggestion if not item.tree else p.parent / suggestion
        fix = "a folder that holds no input" if problem == "contains" else f"a new folder such as {beside}"
        raise OutputError(
            f"--out {out}: {problem} {item.what} ({p}); {command} would write its outputs among its"
            f" inputs: choose {fix}"
        )


def check_writable(path: Path, flag: str, is_file: bool = False) -> None:
    """Probe that `path` (a folder, or a file with `is_file`) can be created: the nearest existing
    folder takes a temporary file. Raises OutputError naming `flag` (EACCES, EROFS, a file where
    a folder is needed)."""
    path = Path(path)
    if is_file and path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'metrics.json'}")
    if not is_file and path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is a file; {flag} takes a folder (it is created if missing)")
    folder = path.parent if is_file else path
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{flag} {path}: {existing} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sam2vss-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{flag} {path}: cannot write in {existing} ({e.strerror or e}); choose a writable"
            " location or fix its permissions"
        ) from e


# ------------------------------------------------------------------ one writer per folder
def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class OutputLock:
    """OUT/.lock, created exclusively (O_EXCL) with the holder's pid, host and start time."""

    STALE_EMPTY_S = 60  # a lock still empty this long was left by a process killed while creating it

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / ".lock"
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": now()}
        self.held = False

    def _read(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, held: dict | None) -> bool:
        if held is None:  # empty or damaged: being written right now, or left by a killed creator
            try:
                return time.time() - self.path.stat().st_mtime > self.STALE_EMPTY_S
            except FileNotFoundError:
                return True
        return held.get("host") == self.info["host"] and not _pid_alive(int(held.get("pid", -1)))

    def acquire(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read(self.path)
                if not self._stale(held):
                    who = f"pid {held['pid']} on {held['host']}" if held else "a run starting up"
                    since = held["started"] if held else "just now"
                    raise OutputError(
                        f"--out {self.out}: another run ({who}) is writing here since {since};"
                        f" wait for it to finish or choose another --out (if that run is gone,"
                        f" delete {self.path})"
                    ) from None
                self._take_over(held)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self.held = True
            return
        raise OutputError(f"--out {self.out}: could not take {self.path} (other runs keep replacing it)")

    def _take_over(self, stale: dict | None) -> None:
        """Move the stale lock away and check that it was the one judged stale: a run taking it
        over at the same moment may have just put its own there (then it goes back)."""
        grave = self.path.with_name(f".lock.stale.{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if self._read(grave) != stale:
            os.rename(grave, self.path)
            return
        log.warning("removed a stale lock of a run that is gone: %s", stale or "(empty)")
        grave.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held and self._read(self.path) == self.info:
            self.path.unlink(missing_ok=True)
        self.held = False


# ------------------------------------------------------------------ inputs: what resume keys on
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: each file hashed once


def file_record(path: Path, previous: list | None = None) -> list:
    """[size, mtime_ns, sha256 of the bytes]; the digest is reused when size and mtime equal
    `previous`'s, so a rerun re-hashes only files that were touched."""
    st = os.stat(path)
    if previous is not None and previous[:2] == [st.st_size, st.st_mtime_ns]:
        return previous
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _digests[key] = h.hexdigest()
    return [st.st_size, st.st_mtime_ns, _digests[key]]


def input_record(files: dict[str, Path], recorded: dict | None = None) -> dict[str, list]:
    recorded = recorded or {}
    return {key: file_record(path, recorded.get(key)) for key, path in files.items()}


def changed_inputs(files: dict[str, Path], recorded: dict[str, list]) -> tuple[list[str], dict[str, list]]:
    """(keys whose bytes differ, appeared or vanished; the refreshed record)."""
    try:
        now = input_record(files, recorded)
    except FileNotFoundError as e:
        return [f"{e.filename} vanished"], recorded
    keys = now.keys() | recorded.keys()
    changed = sorted(k for k in keys if k not in now or k not in recorded or now[k][2] != recorded[k][2])
    return changed, now


def _record_digest(record: dict[str, list]) -> str:
    return hashlib.sha256(json.dumps(sorted((k, v[2]) for k, v in record.items())).encode()).hexdigest()


def save_record(out: Path, name: str, record: dict[str, list]) -> dict:
    """Write OUT/.inputs/<name>.json; the manifest's summary of it."""
    text = json.dumps(record, separators=(",", ":"), sort_keys=True)
    atomic_write(Path(out) / INPUTS / f"{name}.json", lambda tmp: tmp.write_text(text))
    return {"files": len(record), "sha256": _record_digest(record)}


def load_record(out: Path, name: str, summary: dict) -> dict[str, list] | None:
    """The record the manifest's `summary` describes, or None when it is missing or another."""
    try:
        record = json.loads((Path(out) / INPUTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return record if _record_digest(record) == summary.get("sha256") else None


# ------------------------------------------------------------------ manifest
def read_manifest(out: Path) -> dict | None:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise OutputError(f"--out {out}: {path} is damaged ({e}); move it away, or choose a new --out") from e
    if not isinstance(data, dict) or "config_hash" not in data or data.get("schema", 1) > SCHEMA:
        raise OutputError(
            f"--out {out}: {path} is not a sam2vss refine manifest of schema <= {SCHEMA} (written by a"
            " newer sam2vss?); choose a new --out, or upgrade sam2vss"
        )
    return data


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_diff(folder: dict, here: dict) -> list[str]:
    """'field: folder value -> this run's value' for every field that differs."""
    a, b = _flat(folder), _flat(here)
    unset = "(unset)"
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, unset) != b.get(k, unset))
    return [f"{k} {a.get(k, unset)!r} -> {b.get(k, unset)!r}" for k in keys]


def supersede(out: Path, names: Iterable[str], manifest: bool) -> Path:
    """Move OUT/<name> for each name (and, with `manifest`, the manifest and the input records)
    to OUT/.superseded/<time>/; never deletes."""
    out = Path(out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out / SUPERSEDED / stamp
    k = 1
    while dest.exists():
        k += 1
        dest = out / SUPERSEDED / f"{stamp}-{k}"
    dest.mkdir(parents=True)
    for name in names:
        if (out / name).exists():
            os.rename(out / name, dest / name)
    for entry in ("manifest.json", INPUTS) if manifest else ():
        if (out / entry).exists():
            os.rename(out / entry, dest / entry)
    return dest


def foreign_entries(out: Path) -> list[str]:
    """What a folder without a manifest holds besides our own dot-entries (lock, partial)."""
    if not Path(out).is_dir():
        return []
    return sorted(p.name for p in Path(out).iterdir() if not p.name.startswith("."))


class Manifest:
    """OUT/manifest.json, rewritten atomically after every change; the driver is its only writer."""

    def __init__(self, out: Path, data: dict):
        self.path = Path(out) / "manifest.json"
        self.data = data

    @property
    def videos(self) -> dict[str, dict]:
        return self.data["videos"]

    def save(self) -> None:
        write_json(self.path, self.data)

    def record(self, name: str, entry: dict) -> None:
        self.videos[name] = entry
        self.save()


def publish(stage: Path, final: Path) -> None:
    """Move a complete video from OUT/.partial/<video> to OUT/<video>, replacing an older one
    (two renames: a crash between them leaves the video missing, so a rerun redoes it)."""
    if final.exists():
        old = stage.with_name(stage.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(stage, final)
        shutil.rmtree(old)
    else:
        os.rename(stage, final)


def open_manifest(
    out: Path, data: dict, overwrite: bool, folder_settings: Callable[[dict], dict]
) -> Manifest:
    """The folder's manifest for this run's `data` (schema, hash, settings, config, run header),
    keeping the videos of the same configuration. Another configuration is refused, naming the
    settings that differ (`folder_settings` reads them from an old manifest), or with
    `overwrite` set aside in OUT/.superseded/<time>/. A non-empty folder without a manifest is
    refused: it was not written by refine. The run header in `data` is saved with the first
    video this run records."""
    out = Path(out)
    old = read_manifest(out)
    if old is None:
        foreign = foreign_entries(out)
        if foreign:
            raise OutputError(
                f"--out {out}: the folder holds {len(foreign)} entries (first: {foreign[0]}) but no"
                " manifest.json, so it is not a refine output folder; choose a new or empty --out"
            )
    elif old["config_hash"] != data["config_hash"]:
        diff = "; ".join(settings_diff(folder_settings(old), data["settings"]))
        if not overwrite:
            raise OutputError(
                f"--out {out}: the folder holds results of another configuration (folder -> this run:"
                f" {diff or 'hash ' + old['config_hash'] + ' -> ' + data['config_hash']}); use a new"
                f" --out, the folder's settings, or --overwrite (sets its videos aside in"
                f" {out / SUPERSEDED})"
            )
        dest = supersede(out, old.get("videos", {}), manifest=True)
        log.warning("--overwrite: moved %d videos of the other configuration to %s", len(old["videos"]), dest)
        old = None
    manifest = Manifest(out, {**data, "videos": old["videos"] if old else {}})
    if old is None:  # a rerun that skips everything leaves the folder as it was
        manifest.save()
    return manifest

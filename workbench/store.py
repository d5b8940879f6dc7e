"""The run store: every analysis writes one run, a folder that is either whole or absent.

Layout::

    <root>/<kind>/<run_id>/
        manifest.json         kind, run_id, model, params, summary, versions, created, seconds, artifacts
        <name>.safetensors    tensors   (RunWriter.save_tensors / Run.tensors)
        <name>.parquet        tables    (RunWriter.save_table   / Run.table)
        <name>.json           documents (RunWriter.save_json    / Run.json), e.g. circuits as node-link JSON

A run is written into a temporary folder beside its destination and renamed into place when the ``with`` block
ends normally (:func:`workbench.atomic.atomic_dir`); an exception leaves nothing behind. Nothing is pickled.

Faults a stored run can have, and where they are caught (a faulty run is listed with status ``"corrupt"`` and an
error naming the file and the fault; it never hides the other runs):

- when listing (cheap, no data read): a manifest that is missing, too large, not JSON, nested too deep or
  inconsistent with its folder; an artifact that is missing, whose size differs from the one recorded at write
  time, whose safetensors header does not parse or does not match the file's length, or whose parquet file lacks
  the ``PAR1`` magic at either end; any folder or file that is a link resolving outside the store.
- when loading an artifact (full): the file's own reader, and for tensors, NaN or Inf values in a tensor that
  was finite when written (the manifest records which tensors held non-finite values).

Temporary folders left by killed writers are removed on the first :meth:`Store.list` of a store object (see
:meth:`Store.clean_tmp`).

Example::

    store = Store()
    with store.create("massive", model="smollm2-135m", params={"n_tokens": 4096}) as w:
        w.save_tensors("stats", {"top": top})          # top: any tensor, saved bit-exact
        w.save_table("layers", df)
        w.summary.update({"max_ratio": 812.0})
    run = store.load("massive", w.info.run_id)
    run.tensors("stats")["top"]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from workbench.atomic import STALE_TMP_S, TMP_PREFIX, atomic_dir, is_stale_tmp, remove_tmp, write_json
from workbench.paths import runs_dir
from workbench.store_checks import escapes, parquet_problem, real_path, safetensors_problem, too_deep

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pandas as pd
    import torch

__all__ = [
    "ARTIFACT_TYPES",
    "CorruptRunError",
    "MANIFEST",
    "Run",
    "RunInfo",
    "RunNotFoundError",
    "RunWriter",
    "Store",
    "new_run_id",
    "validate_name",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
#: a manifest larger than this many bytes, or nested deeper than this many levels, is corrupt
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_MANIFEST_DEPTH = 64
#: the run id of the one entry :meth:`Store.list` gives for a kind folder that links outside the store
WHOLE_KIND = "*"

#: artifact type -> file suffix
ARTIFACT_TYPES: dict[str, str] = {"tensors": ".safetensors", "table": ".parquet", "json": ".json"}

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MAX_NAME = 128
_VERSIONED_PACKAGES = {
    "torch": "torch",
    "transformers": "transformers",
    "transformer-lens": "transformer-lens",
    "workbench": "interp-workbench",
}


class RunNotFoundError(LookupError):
    """No run of that kind and id exists in the store."""


class CorruptRunError(ValueError):
    """A run folder exists but its manifest or one of its files cannot be read."""


def validate_name(value: object, what: str = "name") -> str:
    """Return ``value`` if it is a safe kind, run id or artifact name, else raise ValueError.

    Accepted: 1 to 128 characters from letters, digits, ``-``, ``_`` and ``.``, not starting with ``.`` or ``-``
    and not containing ``..`` (so no path separators, no traversal, no hidden or temporary names).
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value or len(value) > _MAX_NAME or ".." in value or not _NAME_RE.match(value) or value[0] == "-":
        raise ValueError(
            f"invalid {what} {value!r}: use 1-{_MAX_NAME} letters, digits, '-', '_' or '.', "
            "starting with a letter, digit or '_', without '..' or path separators"
        )
    return value


def new_run_id() -> str:
    """A fresh, sortable run id: ``YYYYMMDD-HHMMSS-<6 hex>`` (UTC)."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def package_versions() -> dict[str, str | None]:
    """Installed versions of torch, transformers, transformer-lens and the workbench (None when absent)."""
    out: dict[str, str | None] = {}
    for key, dist in _VERSIONED_PACKAGES.items():
        try:
            out[key] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[key] = None
    if out["workbench"] is None:
        import workbench

        out["workbench"] = getattr(workbench, "__version__", None)
    return out


def _jsonable(obj: Any, what: str) -> Any:
    """``obj`` as plain JSON values (numpy/torch scalars and small arrays become numbers and lists)."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "item"):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, (set, frozenset, tuple)):
            return list(o)
        raise TypeError(f"cannot store {type(o).__name__} as JSON")

    try:
        return json.loads(json.dumps(obj, default=default))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from exc


@dataclass
class RunInfo:
    """What the store knows about one run folder, without loading its artifacts.

    ``status`` is ``"ok"`` or ``"corrupt"``; a corrupt run carries an ``error`` message and whatever of its
    manifest could be read (``manifest`` is None when the manifest itself is missing or invalid). A kind folder
    that links outside the store is one corrupt entry with ``run_id`` :data:`WHOLE_KIND` (``"*"``).
    """

    kind: str
    run_id: str
    path: Path
    status: str = "ok"
    error: str | None = None
    manifest: dict | None = None
    created: str | None = None
    model: str | None = None
    summary: dict = field(default_factory=dict)
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        """True when the run is whole and readable."""
        return self.status == "ok"


def _read_info(kind: str, run_dir: Path, root: Path, *, root_real: Path | None = None,
               kind_real: Path | None = None) -> RunInfo:
    """Inspect one run folder of the store at ``root`` (cheap checks only, see the module docstring); never raises
    for a broken run (it comes back with status "corrupt"). ``root_real`` and ``kind_real`` are the real paths of
    the store and of the kind folder, when the caller has them."""
    info = RunInfo(kind=kind, run_id=run_dir.name, path=run_dir)
    try:
        root_real = root.resolve() if root_real is None else root_real
        run_real = real_path(run_dir, run_dir.parent.resolve() if kind_real is None else kind_real)
        if not run_real.is_relative_to(root_real):
            raise CorruptRunError(f"{run_dir}: links outside the store (to {run_real}); refused")
        manifest = _read_manifest(run_dir, root_real, run_real)
        info.manifest = manifest
        info.created = manifest.get("created") if isinstance(manifest.get("created"), str) else None
        info.model = manifest.get("model") if isinstance(manifest.get("model"), str) else None
        info.summary = manifest.get("summary") if isinstance(manifest.get("summary"), dict) else {}
        seconds = manifest.get("seconds")
        info.seconds = float(seconds) if isinstance(seconds, (int, float)) else None
        _check_manifest(manifest, kind, run_dir, root_real, run_real)
    except CorruptRunError as exc:
        info.status = "corrupt"
        info.error = str(exc)
    except OSError as exc:
        info.status = "corrupt"
        info.error = f"{run_dir}: cannot read: {exc}"
    except Exception as exc:  # anything else (RecursionError, MemoryError, ...): this run only is corrupt
        info.status = "corrupt"
        info.error = f"{run_dir}: cannot read: {type(exc).__name__}: {str(exc)[:300]}"
    return info


def _corrupt(kind: str, path: Path, exc: BaseException) -> RunInfo:
    return RunInfo(kind=kind, run_id=path.name, path=path, status="corrupt",
                   error=f"{path}: cannot read: {type(exc).__name__}: {str(exc)[:300]}")


def _read_manifest(run_dir: Path, root_real: Path, run_real: Path) -> dict:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise CorruptRunError(f"{path}: missing manifest")
    real = escapes(path, root_real, root_real=root_real, parent_real=run_real)
    if real is not None:
        raise CorruptRunError(f"{path}: manifest links outside the store (to {real}); refused")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise CorruptRunError(f"{path}: manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES} accepted")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise CorruptRunError(f"{path}: manifest nests too deep to parse (over {MAX_MANIFEST_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRunError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise CorruptRunError(f"{path}: manifest is not a JSON object")
    if too_deep(manifest, MAX_MANIFEST_DEPTH):
        raise CorruptRunError(f"{path}: manifest nests deeper than {MAX_MANIFEST_DEPTH} levels")
    return manifest


def _check_manifest(manifest: dict, kind: str, run_dir: Path, root_real: Path, run_real: Path) -> None:
    """Raise CorruptRunError unless the manifest is consistent with its folder and names existing files."""
    path = run_dir / MANIFEST
    if manifest.get("kind") != kind or manifest.get("run_id") != run_dir.name:
        raise CorruptRunError(
            f"{path}: manifest names {manifest.get('kind')!r}/{manifest.get('run_id')!r}, "
            f"but the folder is {kind!r}/{run_dir.name!r}"
        )
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, list):
        raise CorruptRunError(f"{path}: 'artifacts' is not a list")
    for entry in artifacts:
        _check_artifact(run_dir / _artifact_file(entry, path), entry, root_real, run_real)


def _check_artifact(file: Path, entry: dict, root_real: Path, run_real: Path) -> None:
    """Raise CorruptRunError unless ``file`` is present, inside the store, of its recorded size and well-formed
    as far as its header and footer tell."""
    if not file.is_file():
        raise CorruptRunError(f"{file}: artifact listed in the manifest is missing")
    real = escapes(file, root_real, root_real=root_real, parent_real=run_real)
    if real is not None:
        raise CorruptRunError(f"{file}: artifact links outside the store (to {real}); refused")
    size = file.stat().st_size
    recorded = entry.get("bytes")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != size:
        raise CorruptRunError(
            f"{file}: {size} bytes, but {recorded} were written (truncated or changed since the run was stored)"
        )
    problem = None
    if entry["type"] == "tensors":
        keys = entry.get("keys")
        keys = keys if isinstance(keys, list) and all(isinstance(k, str) for k in keys) else None
        problem = safetensors_problem(file, size, keys)
    elif entry["type"] == "table":
        problem = parquet_problem(file, size)
    if problem is not None:
        raise CorruptRunError(f"{file}: {problem}")


def _artifact_file(entry: Any, manifest_path: Path) -> str:
    """The file name of one manifest artifact entry, checked to stay inside the run folder."""
    if not isinstance(entry, dict) or entry.get("type") not in ARTIFACT_TYPES:
        raise CorruptRunError(f"{manifest_path}: malformed artifact entry {entry!r}")
    try:
        name = validate_name(entry.get("name"), "artifact name")
    except ValueError as exc:
        raise CorruptRunError(f"{manifest_path}: {exc}") from exc
    file = name + ARTIFACT_TYPES[entry["type"]]
    if entry.get("file", file) != file:
        raise CorruptRunError(
            f"{manifest_path}: artifact {name!r} names unexpected file {entry.get('file')!r}"
        )
    return file


class RunWriter:
    """Writes one run; use as a context manager (from :meth:`Store.create`).

    Inside the ``with`` block, ``path`` is the temporary folder being written; ``summary`` is a dict to fill
    with the run's headline numbers (JSON values). After a normal exit ``info`` is the final :class:`RunInfo`.
    """

    def __init__(self, store: Store, kind: str, *, model: str | None, params: dict, run_id: str) -> None:
        self.store = store
        self.kind = kind
        self.run_id = run_id
        self.model = model
        self.params = params
        self.summary: dict[str, Any] = {}
        self.info: RunInfo | None = None
        self._artifacts: list[dict[str, Any]] = []
        self._dest = store.root / kind / run_id
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self._path: Path | None = None
        self._created: str | None = None
        self._t0 = 0.0

    @property
    def path(self) -> Path:
        """The temporary folder being written (only valid inside the ``with`` block)."""
        if self._path is None:
            raise RuntimeError("RunWriter.path is only available inside its `with` block")
        return self._path

    @property
    def dest(self) -> Path:
        """Where the run will be once written."""
        return self._dest

    def __enter__(self) -> RunWriter:
        if self._ctx is not None:
            raise RuntimeError("a RunWriter can be entered only once")
        if self._dest.exists():
            raise FileExistsError(f"run {self.kind}/{self.run_id} already exists at {self._dest}")
        real = escapes(self._dest.parent, self.store.root)
        if real is not None:
            raise ValueError(
                f"kind folder {self._dest.parent} links outside the store (to {real}); refusing to write there"
            )
        self._ctx = atomic_dir(self._dest, mark_writer=True)
        self._path = self._ctx.__enter__()
        self._created = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._ctx is not None
        ctx, self._ctx = self._ctx, None
        path, self._path = self._path, None
        if exc_type is not None:
            ctx.__exit__(exc_type, exc, tb)  # removes the temporary folder
            return False
        try:
            manifest = _jsonable(self._manifest(), "run manifest")
            assert path is not None
            write_json(path / MANIFEST, manifest)
        except BaseException as err:
            ctx.__exit__(type(err), err, err.__traceback__)
            raise
        ctx.__exit__(None, None, None)  # renames into place (raises FileExistsError on a race)
        self.info = _read_info(self.kind, self._dest, self.store.root)
        return False

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "run_id": self.run_id,
            "model": self.model,
            "params": self.params,
            "summary": self.summary,
            "versions": package_versions(),
            "created": self._created,
            "seconds": round(time.perf_counter() - self._t0, 6),
            "artifacts": self._artifacts,
        }

    def _new_file(self, name: str, type_: str) -> Path:
        validate_name(name, "artifact name")
        if type_ == "json" and name == "manifest":
            raise ValueError("artifact name 'manifest' is reserved for the run's manifest.json")
        if any(a["name"] == name and a["type"] == type_ for a in self._artifacts):
            raise ValueError(f"this run already has a {type_} artifact named {name!r}")
        file = name + ARTIFACT_TYPES[type_]
        return self.path / file

    def _record(self, name: str, type_: str, file: Path, **extra: Any) -> None:
        self._artifacts.append(
            {"name": name, "type": type_, "file": file.name, "bytes": file.stat().st_size, **extra}
        )

    def save_tensors(
        self, name: str, tensors: dict[str, torch.Tensor], *, allow_nonfinite: bool | Iterable[str] = True
    ) -> Path:
        """Save named tensors (any shapes and dtypes) to ``<name>.safetensors``; they load back bit-exact.

        Tensors are moved to the CPU and made contiguous; tensors sharing memory are copied first
        (safetensors refuses shared storage). Non-tensor arrays are converted with ``torch.as_tensor``.

        ``allow_nonfinite`` says which tensors may hold NaN or Inf: True (the default) any, False none, or the
        names of those that may; any other non-finite tensor is refused with a ValueError naming it. The manifest
        records which tensors held non-finite values, so NaN or Inf appearing in any other later is reported as
        corruption when the tensors are loaded.
        """
        import torch
        from safetensors.torch import save_file

        if not isinstance(tensors, dict) or not tensors:
            raise ValueError("save_tensors needs a non-empty dict of name -> tensor")
        file = self._new_file(name, "tensors")
        seen: set[int] = set()
        prepared: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            if not isinstance(key, str):
                raise ValueError(f"tensor keys must be strings, got {key!r}")
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            t = t.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            if t.numel() and (ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            if t.numel():
                seen.add(ptr)
            prepared[key] = t
        nonfinite = sorted(k for k, t in prepared.items() if not _all_finite(t))
        allowed = allow_nonfinite if isinstance(allow_nonfinite, bool) else set(allow_nonfinite)
        refused = [k for k in nonfinite if allowed is False or (allowed is not True and k not in allowed)]
        if refused:
            t = prepared[refused[0]]
            raise ValueError(
                f"tensor {refused[0]!r} of artifact {name!r} holds {int(t.isnan().sum())} NaN and "
                f"{int(t.isinf().sum())} infinite values of {t.numel()}; refused (non-finite tensors: {refused})"
            )
        save_file(prepared, str(file))
        self._record(name, "tensors", file, keys=sorted(prepared), nonfinite=nonfinite)
        return file

    def save_table(self, name: str, df: pd.DataFrame) -> Path:
        """Save a pandas DataFrame to ``<name>.parquet`` (pyarrow); column names must be strings."""
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"save_table needs a pandas DataFrame, got {type(df).__name__}")
        file = self._new_file(name, "table")
        df.to_parquet(file, engine="pyarrow")
        self._record(name, "table", file, rows=len(df))
        return file

    def save_json(self, name: str, obj: Any) -> Path:
        """Save a JSON document (dicts, lists, numbers, strings) to ``<name>.json``."""
        file = self._new_file(name, "json")
        write_json(file, _jsonable(obj, f"json artifact {name!r}"))
        self._record(name, "json", file)
        return file


def _all_finite(t: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or Inf (tensors of integer or boolean dtype always do)."""
    import torch

    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return True
    return bool(torch.isfinite(t).all())


class Run:
    """A stored run, opened for reading. Artifacts are read on demand; :meth:`verify` reads them all."""

    def __init__(self, info: RunInfo) -> None:
        assert info.manifest is not None
        self.info = info
        self.path = info.path
        self.kind = info.kind
        self.run_id = info.run_id
        self.manifest: dict[str, Any] = info.manifest

    def __repr__(self) -> str:
        return f"Run({self.kind!r}, {self.run_id!r}, model={self.model!r})"

    @property
    def summary(self) -> dict[str, Any]:
        """The run's headline numbers."""
        return self.manifest.get("summary") or {}

    @property
    def params(self) -> dict[str, Any]:
        """The parameters the run was made with."""
        return self.manifest.get("params") or {}

    @property
    def model(self) -> str | None:
        """The model spec the run was made with."""
        return self.manifest.get("model")

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        """The manifest's artifact entries (name, type, file, bytes, ...)."""
        return list(self.manifest.get("artifacts") or [])

    def names(self, type_: str | None = None) -> list[str]:
        """Artifact names, optionally of one type (``"tensors"``, ``"table"`` or ``"json"``)."""
        return [a["name"] for a in self.artifacts if type_ is None or a["type"] == type_]

    def _entry(self, name: str, type_: str) -> dict[str, Any]:
        return next(a for a in self.artifacts if a["name"] == name and a["type"] == type_)

    def _file(self, name: str, type_: str) -> Path:
        if name not in self.names(type_):
            have = ", ".join(self.names(type_)) or "none"
            raise KeyError(f"run {self.kind}/{self.run_id} has no {type_} artifact {name!r} (it has: {have})")
        file = self.path / (name + ARTIFACT_TYPES[type_])
        real = escapes(file, self.path.parent.parent)
        if real is not None:
            raise CorruptRunError(f"{file}: artifact links outside the store (to {real}); refused")
        return file

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """Load the tensors saved under ``name`` (on the CPU, exactly as saved).

        CorruptRunError when the file cannot be read, or when a tensor that was finite when written now holds
        NaN or Inf.
        """
        from safetensors.torch import load_file

        file = self._file(name, "tensors")
        try:
            out = load_file(str(file))
        except Exception as exc:
            raise CorruptRunError(f"{file}: cannot read tensors: {exc}") from exc
        recorded = self._entry(name, "tensors").get("nonfinite")
        if isinstance(recorded, list):  # runs written before this record existed are not checked
            for key, t in out.items():
                if key not in recorded and not _all_finite(t):
                    raise CorruptRunError(
                        f"run {self.kind}/{self.run_id}, artifact {name!r} ({file}): tensor {key!r} holds NaN or "
                        "Inf values, but was finite when written"
                    )
        return out

    def table(self, name: str) -> pd.DataFrame:
        """Load the table saved under ``name``."""
        import pandas as pd

        file = self._file(name, "table")
        try:
            return pd.read_parquet(file, engine="pyarrow")
        except Exception as exc:
            raise CorruptRunError(f"{file}: cannot read table: {exc}") from exc

    def json(self, name: str) -> Any:
        """Load the JSON document saved under ``name``."""
        file = self._file(name, "json")
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except RecursionError:
            raise CorruptRunError(f"{file}: cannot read JSON: nested too deep to parse") from None
        except (OSError, ValueError, UnicodeDecodeError, MemoryError) as exc:
            raise CorruptRunError(f"{file}: cannot read JSON: {exc}") from exc

    def subpath(self, relative: str) -> Path:
        """``path / relative``: a file or folder a writer put inside the run besides its artifacts (e.g. a
        dictionary folder). CorruptRunError when it, or any link beneath it, leads out of the run folder."""
        if not isinstance(relative, str) or not relative:
            raise CorruptRunError(f"run {self.kind}/{self.run_id}: {relative!r} is not a relative path")
        run_real = self.path.resolve()
        target = self.path / relative
        real = target.resolve()
        if not real.is_relative_to(run_real):
            raise CorruptRunError(f"run {self.kind}/{self.run_id}: {relative!r} leads out of the run folder (to {real})")
        if real.is_dir():
            for folder, dirs, files in os.walk(real):
                for name in (*dirs, *files):
                    entry = Path(folder) / name
                    if entry.is_symlink() and not entry.resolve().is_relative_to(run_real):
                        raise CorruptRunError(
                            f"{entry}: links out of the run {self.kind}/{self.run_id} (to {entry.resolve()}); refused"
                        )
        return target

    def verify(self) -> None:
        """Read every artifact in full; CorruptRunError naming the first one that is damaged."""
        readers = {"tensors": self.tensors, "table": self.table, "json": self.json}
        for entry in self.artifacts:
            readers[entry["type"]](entry["name"])


def _sort_key(info: RunInfo) -> tuple[str, str]:
    created = info.created
    if created is None:
        with contextlib.suppress(OSError):
            mtime = info.path.stat().st_mtime
            created = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
    # ISO strings ending in "Z" vs "+00:00" sort the same up to the seconds.
    return ((created or "")[:19], info.run_id)


class Store:
    """Runs on disk under ``root`` (default :func:`workbench.paths.runs_dir`), one folder per run.

    The first :meth:`list` (or :meth:`latest`) of a store object removes the stale temporary folders of killed
    writers (:meth:`clean_tmp` with the 24-hour bound of :data:`workbench.atomic.STALE_TMP_S`).
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else runs_dir()
        self._cleaned = False

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def create(
        self,
        kind: str,
        *,
        model: str | None = None,
        params: dict | None = None,
        run_id: str | None = None,
    ) -> RunWriter:
        """Start a new run of ``kind``; use the returned writer as a context manager.

        ``params`` must be JSON-serialisable; ``run_id`` defaults to :func:`new_run_id`.
        """
        validate_name(kind, "kind")
        run_id = validate_name(run_id, "run_id") if run_id is not None else new_run_id()
        if model is not None and not isinstance(model, str):
            model = str(model)
        params = _jsonable(dict(params or {}), "params")
        return RunWriter(self, kind, model=model, params=params, run_id=run_id)

    def _kind_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _is_valid(p.name))

    def kinds(self) -> list[str]:
        """Kinds that have a folder in the store, sorted (a kind folder linking outside the store is none)."""
        return [p.name for p in self._kind_folders() if escapes(p, self.root) is None]

    def _run_dirs(self, kind: str) -> list[Path]:
        folder = self.root / kind
        if not folder.is_dir() or escapes(folder, self.root) is not None:
            return []
        return [p for p in folder.iterdir() if _is_valid(p.name) and (p.is_dir() or p.is_symlink())]

    def _kind_infos(self, kind: str) -> list[RunInfo]:
        """The runs of one kind folder, each read on its own (a fault in one never hides the others)."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        try:
            root_real = self.root.resolve()
            kind_real = folder.resolve()
            if not kind_real.is_relative_to(root_real):
                raise CorruptRunError(f"{folder}: kind folder links outside the store (to {kind_real}); "
                                      "its runs are not read")
            run_dirs = self._run_dirs(kind)
        except Exception as exc:  # an unreadable kind folder is one corrupt entry; the other kinds still list
            error = str(exc) if isinstance(exc, CorruptRunError) else f"{folder}: cannot list: {exc}"
            return [RunInfo(kind=kind, run_id=WHOLE_KIND, path=folder, status="corrupt", error=error)]
        infos = []
        for run_dir in run_dirs:
            try:
                infos.append(_read_info(kind, run_dir, self.root, root_real=root_real, kind_real=kind_real))
            except Exception as exc:  # _read_info already catches; this guards what it cannot
                infos.append(_corrupt(kind, run_dir, exc))
        return infos

    def list(self, kind: str | None = None, model: str | None = None) -> list[RunInfo]:
        """Runs (ok and corrupt), newest first, optionally only of one kind and/or one model.

        Temporary folders of runs being written (or left by a killed writer) are not listed. A kind folder that
        links outside the store, or cannot be listed, is one corrupt entry, with run id :data:`WHOLE_KIND`.
        """
        if not self._cleaned:
            self._cleaned = True
            with contextlib.suppress(Exception):  # a read-only store still lists
                self.clean_tmp(STALE_TMP_S)
        kinds = [validate_name(kind, "kind")] if kind is not None else [p.name for p in self._kind_folders()]
        infos = [i for k in kinds for i in self._kind_infos(k)]
        if model is not None:
            infos = [i for i in infos if i.model == model]
        return sorted(infos, key=_sort_key, reverse=True)

    def latest(self, kind: str, model: str | None = None) -> RunInfo | None:
        """The newest readable run of ``kind`` (and ``model``), or None."""
        return next((i for i in self.list(kind, model) if i.ok), None)

    def info(self, kind: str, run_id: str) -> RunInfo:
        """The :class:`RunInfo` of one run; RunNotFoundError if it does not exist."""
        run_dir = self._existing(kind, run_id)
        return _read_info(kind, run_dir, self.root)

    def load(self, kind: str, run_id: str) -> Run:
        """Open a run for reading; RunNotFoundError if absent, CorruptRunError if it cannot be read."""
        info = self.info(kind, run_id)
        if not info.ok:
            raise CorruptRunError(info.error)
        return Run(info)

    def delete(self, kind: str, run_id: str) -> None:
        """Remove a run (it disappears at once: it is renamed aside, then deleted)."""
        run_dir = self._existing(kind, run_id)
        if run_dir.is_symlink():  # remove the link, never what it points to
            run_dir.unlink()
            return
        trash = run_dir.parent / f"{TMP_PREFIX}del-{run_id}-{uuid.uuid4().hex[:8]}"
        os.replace(run_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary folders (and files) left by killed writers; return how many.

        A run's temporary folder records its writer (pid, host, process start time, boot id): it is removed once
        that writer is gone and kept while it runs, whatever its age. One whose writer cannot be checked (no
        record, another host) is removed when last modified more than ``older_than_s`` seconds ago.
        """
        if not self.root.is_dir():
            return 0
        now = time.time()
        removed = 0
        for folder in [self.root, *(self.root / k for k in self.kinds())]:
            for child in folder.iterdir():
                if not child.name.startswith(TMP_PREFIX):
                    continue
                with contextlib.suppress(OSError):
                    if is_stale_tmp(child, older_than_s, now=now):
                        remove_tmp(child)
                        removed += 1
        return removed

    def _existing(self, kind: str, run_id: str) -> Path:
        validate_name(kind, "kind")
        validate_name(run_id, "run_id")
        run_dir = self.root / kind / run_id
        if not (run_dir.is_dir() or run_dir.is_symlink()):  # a dangling link is a corrupt run, not an absent one
            have = sorted(p.name for p in self._run_dirs(kind))
            listing = ", ".join(have[-10:]) if have else "none"
            more = f" (latest 10 of {len(have)})" if len(have) > 10 else ""
            raise RunNotFoundError(
                f"no run {kind}/{run_id} in {self.root}; runs of kind {kind!r}{more}: {listing}"
            )
        return run_dir


def _is_valid(name: str) -> bool:
    try:
        validate_name(name)
    except ValueError:
        return False
    return True

"""Sweep files: a grid of runs of one analysis, read from TOML and checked before anything runs.

A sweep file names one analysis (its verb), the models and the options::

    analysis = "massive"                                   # a verb of `workbench --help`
    models = ["toy/llama-d64-l2", "toy/gpt-relu-d64-l2"]   # specs as `--model` takes them (default: the verb's)
    checkpoints = [100, 1000]                              # optional: every zoo model at each of these steps

    [options]                                              # fixed for every task
    tokens = 1024
    intervention = false

    [grid]                                                 # one task per value; the product of every list
    layers = [0, 1]                                        # a list option takes one value per task (or a list)
    ratio_threshold = [100.0, 1000.0]

Options are the analysis's config fields (``seq_len`` or ``seq-len``); each task's config is built and checked by the
contract (:meth:`workbench.analysis.Config.check`), so a bad value is reported with the contract's own message before
any task starts. :func:`find_done` finds the tasks whose run is already in the store (same kind, model and options).
This module imports no analysis: the caller passes the lookup from verb to :class:`workbench.analysis.Analysis`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.analysis import Analysis, FieldInfo, describe_fields
from workbench.errors import ConfigError, ModelSpecError

if TYPE_CHECKING:
    from workbench.store import RunInfo, Store

__all__ = ["SweepPlan", "SweepTask", "TOP_KEYS", "find_done", "plan_sweep", "read_sweep", "show_value"]

#: the keys a sweep file may hold at its top level
TOP_KEYS = ("analysis", "models", "checkpoints", "options", "grid")
_TOY = re.compile(r"^toy/(?P<name>[A-Za-z0-9_.-]+?)(?:@(?P<step>-?\d+))?$")


@dataclass(frozen=True)
class SweepTask:
    """One cell of the grid: the model spec stored with its run (for an analysis that loads no model, the name its
    ``model_of`` gives), the grid's values for it, and every option of the analysis's config as JSON values
    (``params``, what the store records)."""

    index: int
    model: str | None
    values: dict[str, Any]
    params: dict[str, Any]

    def label(self) -> str:
        """``model k=v ...`` for people."""
        parts = [self.model or "-"] + [f"{k}={show_value(v)}" for k, v in self.values.items()]
        return " ".join(parts)


@dataclass
class SweepPlan:
    """A checked sweep: the analysis, the file's settings and the tasks in grid order (models outermost)."""

    analysis: Analysis
    source: str
    models: list[str | None]
    options: dict[str, Any]
    grid: dict[str, list[Any]]
    tasks: list[SweepTask] = field(default_factory=list)


def show_value(value: Any) -> str:
    """A grid value for people: a list as ``1,2``."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def read_sweep(path: Path | str) -> dict[str, Any]:
    """The TOML document of a sweep file; ConfigError naming the file (and the line and column of a syntax error)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser, from PyPI (the `sweep` extra installs it there)
        import tomli as tomllib

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"sweep file {path} not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sweep file {path} cannot be read: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep file {path} is not valid TOML: {exc}") from exc


def _field(infos: dict[str, FieldInfo], key: str, where: str, analysis: Analysis) -> FieldInfo:
    name = key.replace("-", "_")
    if name not in infos:
        raise ConfigError(f"{where}: {analysis.verb} has no option {key!r}; its options: {', '.join(infos)}")
    return infos[name]


def _value(info: FieldInfo, value: Any) -> Any:
    """A TOML value as the config field takes it: a scalar for a list option becomes a one-element list, an integer
    for a float option a float (as the command line gives it). Anything else is left to the contract's check."""
    if info.many and not isinstance(value, list):
        value = [value]
    if info.base is float:
        value = [_as_float(v) for v in value] if isinstance(value, list) else _as_float(value)
    return value


def _as_float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_model(spec: Any, where: str) -> str:
    """``spec`` if this machine can name it (a zoo member, a built checkpoint, SmolLM2, a local folder, a hub name);
    ConfigError otherwise. An unbuilt zoo member is accepted (its task builds it)."""
    from workbench import zoo
    from workbench.models import resolve

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{where}: a model is a spec string (see `workbench models`), got {spec!r}")
    try:
        match = _TOY.match(spec)
        if spec.startswith("toy/") and match:
            zoo.get(match["name"])
            if zoo.is_built(match["name"]):
                resolve(spec, build=False)
        else:
            resolve(spec, build=False)
    except (ModelSpecError, KeyError, ValueError, OSError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return spec


def _models(doc: dict[str, Any], analysis: Analysis) -> list[str | None]:
    models, steps = doc.get("models"), doc.get("checkpoints")
    if not analysis.needs_model:
        if models is not None or steps is not None:
            raise ConfigError(f"{analysis.verb} loads no model (it names its models in its options); "
                              "remove 'models' and 'checkpoints' from the sweep file")
        return [None]
    if models is None:
        models = [analysis.default_model]
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        raise ConfigError(f"'models' must be a non-empty list of model specs, got {models!r}")
    if steps is not None:
        if not isinstance(steps, list) or not steps or not all(type(s) is int and s >= 0 for s in steps):
            raise ConfigError(f"'checkpoints' must be a non-empty list of steps (integers >= 0), got {steps!r}")
        for m in models:
            if not (isinstance(m, str) and m.startswith("toy/") and "@" not in m):
                raise ConfigError(f"'checkpoints' applies to zoo models named without a step (toy/<name>); "
                                  f"{m!r} is not one (list a checkpoint folder or toy/<name>@<step> in 'models')")
        models = [f"{m}@{s}" for m in models for s in steps]
    out = [_check_model(m, "'models'") for m in models]
    if len(set(out)) < len(out):
        raise ConfigError(f"'models' names a model twice: {out}")
    return out


def plan_sweep(doc: dict[str, Any], lookup: Callable[[str], Analysis], source: str = "sweep file") -> SweepPlan:
    """Check a sweep document and expand its grid into tasks; ConfigError naming what was wrong and what is accepted.

    ``lookup(verb)`` gives the analysis (LookupError for an unknown verb, listing the accepted ones).
    """
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(TOP_KEYS)}")
    verb = doc.get("analysis")
    if not isinstance(verb, str):
        raise ConfigError(f"{source}: name the analysis, e.g. analysis = \"massive\" (got {verb!r})")
    try:
        analysis = lookup(verb)
    except LookupError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    infos = {i.name: i for i in describe_fields(analysis.config)}
    tables = {}
    for key in ("options", "grid"):
        table = doc.get(key, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{key}] must be a table of option = value, got {table!r}")
        tables[key] = {_field(infos, k, f"{source} [{key}]", analysis).name: v for k, v in table.items()}
    options = {k: _value(infos[k], v) for k, v in tables["options"].items()}
    both = sorted(set(options) & set(tables["grid"]))
    if both:
        raise ConfigError(f"{source}: {', '.join(both)} is both in [options] and in [grid]; keep it in one")
    grid: dict[str, list[Any]] = {}
    for name, values in tables["grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source} [grid]: {name} takes a non-empty list of values (one task per value), "
                              f"got {values!r}; a single value goes in [options]")
        grid[name] = [_value(infos[name], v) for v in values]
    models = _models(doc, analysis)
    plan = SweepPlan(analysis, source, models, options, grid)
    seen: dict[str, int] = {}
    for model in models:
        for combo in itertools.product(*grid.values()):
            values = dict(zip(grid, combo, strict=True))
            try:
                config = analysis.config(**options, **values)
            except TypeError as exc:  # a required option left out
                missing = [i.flag for i in infos.values() if i.required and i.name not in {**options, **values}]
                raise ConfigError(f"{source}: {analysis.verb} needs {', '.join(missing)} (in [options] or "
                                  "[grid])") from exc
            try:
                config.check()
            except ConfigError as exc:
                where = " ".join(f"{k}={show_value(v)}" for k, v in values.items())
                raise ConfigError(f"{source}: {exc}" + (f" (task {where})" if where else "")) from exc
            params = json.loads(json.dumps(dataclasses.asdict(config)))
            if model is None and analysis.model_of is not None:  # what the store records for a model-less analysis
                stored_as = analysis.model_of(config)
            else:
                stored_as = model
            task = SweepTask(len(plan.tasks), stored_as, values, params)
            key = json.dumps([model, params], sort_keys=True)
            if key in seen:
                raise ConfigError(f"{source}: tasks {seen[key]} and {task.index} are the same run ({task.label()})")
            seen[key] = task.index
            plan.tasks.append(task)
    return plan


def find_done(store: Store, plan: SweepPlan) -> dict[int, RunInfo]:
    """Task index -> the newest whole run in ``store`` of the same kind and model whose stored params hold the
    task's options (the store keeps ``asdict(config)`` plus the result's own facts)."""
    runs = [r for r in store.list(plan.analysis.kind) if r.ok and r.manifest is not None]
    done: dict[int, RunInfo] = {}
    for task in plan.tasks:
        for run in runs:  # newest first
            stored = run.manifest.get("params") or {}
            if run.model == task.model and all(k in stored and stored[k] == v for k, v in task.params.items()):
                done[task.index] = run
                break
    return done

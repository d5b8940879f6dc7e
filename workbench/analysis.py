"""The analysis contract: one shape for every analysis, one writer for every run.

An :class:`Analysis` names its run kind and verb, a config dataclass whose fields are its options (type, default,
help text and valid range in the field's metadata, ``Literal`` types for choices), a ``compute(model, config,
progress) -> Result`` function, a demo config for the small models, and a figures function reading a stored run.
The command line, ``workbench demo``, the dashboard's launch form and sweeps are all generated from these fields
(``workbench.ui``); a notebook calls the same thing::

    from probes.analysis import SPARSITY
    result = SPARSITY.run(model, SPARSITY.config(tokens=4096))     # Result: summary, tables, tensors, json, ...
    info = SPARSITY.save(Store(), result, model)                   # one run, params = asdict(config)
    figs = SPARSITY.figures(Store().load("sparsity", info.run_id))  # {name: plotly Figure}

This module imports neither torch nor pandas nor any analysis at import time (``workbench --help`` stays light).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from workbench.errors import ConfigError

if TYPE_CHECKING:
    from workbench.store import Run, RunInfo, Store

__all__ = ["Analysis", "Config", "ConfigError", "Result", "TaskOptions", "describe_fields", "field_flag", "model_spec", "option"]


def option(default: Any = MISSING, help: str = "", *, minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: bool = False, positional: bool = False, aliases: tuple[str, ...] = (),
           lines: bool = False, path: bool = False) -> Any:
    """A config field with its command-line and form metadata.

    ``minimum``/``maximum`` bound numbers (and every number of a list), ``exclusive_minimum`` makes the minimum
    strict; floats must also be finite. ``positional`` makes it a positional argument (required when there is no
    default); ``aliases`` are extra (older) flags; ``lines`` marks a text field whose values are whole lines (prompts:
    never split on spaces or commas); ``path`` marks a file or folder (the dashboard's form keeps those inside the
    workbench's home). A list default is copied per instance; an option without a default is required and
    keyword-only.
    """
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "exclusive_minimum": exclusive_minimum,
            "positional": positional, "aliases": tuple(aliases), "lines": lines, "path": path}
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    if default is MISSING:  # a required option is keyword-only, so it may follow options with defaults
        return field(metadata=meta, kw_only=True)
    return field(default=default, metadata=meta)


def field_flag(name: str) -> str:
    """The command-line flag of a config field: ``top_k`` -> ``--top-k``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class FieldInfo:
    """What the faces need to know of one config field (see :func:`describe_fields`).

    ``base`` is the scalar type (int, float, str, bool); ``many`` marks a list; ``optional`` a field that may be None;
    ``choices`` the allowed values of a ``Literal``.
    """

    name: str
    base: type
    many: bool
    optional: bool
    choices: tuple | None
    default: Any
    required: bool
    help: str
    minimum: float | None
    maximum: float | None
    exclusive_minimum: bool
    positional: bool
    aliases: tuple[str, ...]
    lines: bool
    path: bool = False

    @property
    def flag(self) -> str:
        return field_flag(self.name)


def _unwrap(tp: Any) -> tuple[type, bool, bool, tuple | None]:
    """(scalar type, is a list, may be None, Literal choices) of a field annotation."""
    optional = many = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            raise TypeError(f"unsupported option type {tp!r}")
        tp, origin = args[0], typing.get_origin(args[0])
    if origin in (list, tuple):
        many = True
        tp = typing.get_args(tp)[0]
        origin = typing.get_origin(tp)
    choices = None
    if origin is Literal:
        choices = typing.get_args(tp)
        tp = type(choices[0])
    if tp not in (int, float, str, bool):
        raise TypeError(f"unsupported option type {tp!r}")
    return tp, many, optional, choices


def describe_fields(config: type) -> list[FieldInfo]:
    """The options of a config dataclass, in field order."""
    hints = typing.get_type_hints(config)
    out = []
    for f in dataclasses.fields(config):
        base, many, optional, choices = _unwrap(hints[f.name])
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        m = f.metadata
        out.append(FieldInfo(f.name, base, many, optional, choices, default, default is MISSING, m.get("help", ""),
                             m.get("minimum"), m.get("maximum"), m.get("exclusive_minimum", False),
                             m.get("positional", False), m.get("aliases", ()), m.get("lines", False),
                             m.get("path", False)))
    return out


def _check_value(info: FieldInfo, value: Any) -> None:
    flag = info.flag
    if info.base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag} must be true or false, got {value!r}")
        return
    if info.base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (info.base is int and not isinstance(value, int)):
            raise ConfigError(f"{flag} must be {'an integer' if info.base is int else 'a number'}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value!r}")
        low, high = info.minimum, info.maximum
        if low is not None and (value <= low if info.exclusive_minimum else value < low):
            raise ConfigError(f"{flag} must be {'>' if info.exclusive_minimum else '>='} {low:g}"
                              + (f" and <= {high:g}" if high is not None else "") + f", got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{flag} must be <= {high:g}, got {value!r}")
    elif not isinstance(value, str):
        raise ConfigError(f"{flag} must be text, got {value!r}")
    if info.choices is not None and value not in info.choices:
        raise ConfigError(f"{flag} must be one of {', '.join(map(str, info.choices))}; got {value!r}")


@dataclass
class Config:
    """Base of every analysis config: :meth:`check` validates each field against its type, range and choices,
    then :meth:`validate` (override it for rules between fields). Raises :class:`ConfigError`."""

    def check(self) -> Config:
        """Validate every field; returns ``self``."""
        for info in describe_fields(type(self)):
            value = getattr(self, info.name)
            if value is None:
                if info.optional:
                    continue
                raise ConfigError(f"{info.flag} is required")
            if info.many:
                if not isinstance(value, (list, tuple)):
                    raise ConfigError(f"{info.flag} takes a list of values, got {value!r}")
                if not value and not info.optional:
                    raise ConfigError(f"{info.flag} needs at least one value")
                for v in value:
                    _check_value(info, v)
            else:
                _check_value(info, value)
        self.validate()
        return self

    def validate(self) -> None:
        """Rules between fields (override); raise :class:`ConfigError` naming the options."""


@dataclass
class Result:
    """What one analysis computed, ready for the store's one writer (:meth:`Analysis.save`).

    ``tables``: name -> pandas DataFrame; ``tensors``: name -> {key: tensor}; ``json``: name -> JSON value;
    ``graphs``: name -> an object with ``to_json()`` (a :class:`workbench.circuit.Circuit`); ``folders``: relative
    folder -> a function writing files into that folder of the run (dictionaries in SAELens layout);
    ``params``: computed facts recorded beside the config (e.g. the rules a default resolved to); ``lines``: the text
    a person reads; ``warnings``: what missed what was asked (also stored in the summary under ``warnings``);
    ``objects``: in-memory results for notebooks (not stored).
    """

    summary: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    json: dict[str, Any] = field(default_factory=dict)
    graphs: dict[str, Any] = field(default_factory=dict)
    folders: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    objects: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The human report: ``lines`` then one ``warning:`` line per warning."""
        return "\n".join([*self.lines, *(f"warning: {w}" for w in self.warnings)])


def model_spec(model: Any) -> str | None:
    """The spec a model was loaded from (``workbench.models.load_model`` sets ``workbench_spec``), a string as is,
    else None."""
    if isinstance(model, str):
        return model
    return getattr(model, "workbench_spec", None)


@dataclass(frozen=True)
class Analysis:
    """One analysis behind the contract.

    ``compute(model, config, progress) -> Result`` does the work (``model`` is a loaded model, or None when
    ``needs_model`` is False); ``figures(run) -> {name: Figure}`` draws a stored run; ``demo`` is the config of the
    dashboard's demo run on ``demo_model``; ``model_of(config)`` names the run's model when the analysis loads none.
    """

    kind: str
    verb: str
    help: str
    config: type
    compute: Callable[[Any, Any, bool], Result]
    figures: Callable[[Any], dict[str, Any]]
    demo: Any
    demo_model: str | None
    default_model: str = "smollm2-135m"
    needs_model: bool = True
    model_of: Callable[[Any], str] | None = None
    describe: str = ""

    def run(self, model: Any, config: Any = None, *, progress: bool = False) -> Result:
        """Check ``config`` (default: the config's defaults) and compute; ``model`` may be a spec to load."""
        config = self.config() if config is None else config
        if not isinstance(config, self.config):
            raise ConfigError(f"{self.verb} takes a {self.config.__name__}, got {type(config).__name__}")
        config.check()
        if self.needs_model and isinstance(model, str):
            from workbench.models import load_model

            model = load_model(model)
        return self.compute(model if self.needs_model else None, config, progress)

    def spec_of(self, model: Any, config: Any) -> str:
        """The model spec stored with the run; raises ValueError when a loaded model carries none."""
        if self.model_of is not None and (model is None or not self.needs_model):
            return self.model_of(config)
        spec = model_spec(model)
        if spec is None:
            raise ValueError(f"{self.verb}: the model has no spec (load it with workbench.models.load_model, or pass "
                             "the spec string)")
        return spec

    def save(self, store: Store, result: Result, model: Any, config: Any = None) -> RunInfo:
        """Write ``result`` as one run of this kind: params ``asdict(config)`` plus ``result.params``, the model's
        spec, every artifact, and the summary (with ``warnings`` when there are any)."""
        config = self.config() if config is None else config
        params = {**dataclasses.asdict(config), **result.params}
        with store.create(self.kind, model=self.spec_of(model, config), params=params) as w:
            for name, tensors in result.tensors.items():
                w.save_tensors(name, tensors)
            for name, table in result.tables.items():
                w.save_table(name, table)
            for name, doc in result.json.items():
                w.save_json(name, doc)
            for name, graph in result.graphs.items():
                w.save_json(name, graph.to_json())
            for folder, write in result.folders.items():
                write(w.path / folder)
            w.summary.update(result.summary)
            if result.warnings:
                w.summary["warnings"] = list(result.warnings)
        return w.info

    def launch(self, model: Any, config: Any = None, *, store: Store | None = None, device: str | None = None,
               progress: bool = False, **load_options: Any) -> tuple[RunInfo, Result]:
        """Load ``model`` when it is a spec, run and save: ``(RunInfo, Result)``. ``load_options`` go to
        :func:`workbench.models.load_model`."""
        from workbench.store import Store

        config = self.config() if config is None else config
        config.check()
        if self.needs_model and isinstance(model, str):
            from workbench.models import load_model

            model = load_model(model, device=device, **load_options)
        result = self.run(model, config, progress=progress)
        return self.save(store or Store(), result, model, config), result

    def load(self, run: Run) -> Any:
        """The config a stored run was computed with (fields the config does not know are ignored)."""
        names = {f.name for f in dataclasses.fields(self.config)}
        return self.config(**{k: v for k, v in run.params.items() if k in names})


#: the most task examples an analysis takes (every example is kept, with its activations, in memory)
MAX_EXAMPLES = 10_000

# workbench.data.TASKS (mirrored so that building the command line imports no torch; a test checks it)
TaskName = Literal["induction", "greater-than", "ioi", "sentiment"]


@dataclass
class TaskOptions(Config):
    """The task options several analyses share: which task, how many examples, their seed."""

    task: TaskName = option("induction", "task (workbench.data.TASKS)")
    n: int = option(8, "examples of the task", minimum=1, maximum=MAX_EXAMPLES)
    seed: int = option(0, "seed of the examples", minimum=0)
    half_len: int | None = option(None, "induction: length of the repeated half", minimum=2)

    def validate(self) -> None:
        if self.half_len is not None and self.task != "induction":
            raise ConfigError(f"--half-len is an option of the induction task only, not of {self.task!r}")

    def make_task(self, model: Any) -> Any:
        """The task for ``model``'s tokenizer, on the model's device."""
        from workbench.data import make_task

        options = {} if self.half_len is None else {"half_len": self.half_len}
        try:
            task = make_task(self.task, model.tokenizer, n=self.n, seed=self.seed, **options)
        except TypeError as exc:
            raise ConfigError(f"--half-len is an option of the induction task only, not of {self.task!r}") from exc
        from workbench.limits import check_context

        what = f"--half-len {self.half_len}: a row" if self.half_len is not None else f"a row of --task {self.task}"
        check_context(model, int(task.seq_len), what)
        return task.to(next(model.parameters()).device)

"""Pipeline YAML: schema (pydantic), ``_base_`` inheritance and ``--set a.b=c`` overrides.

Every section forbids unknown keys, so a typo is an error that names the file and the key path instead
of a silently ignored setting. Defaults are the paper's recipes (FNA_SPEC §5.6, §6.3).

The schema names no task. ``task`` names a registered one (:mod:`fnatune.tasks`), which fills its own
defaults (its space, its data root and class count) where the file says nothing, and may bring a section
of its own (detection's ``detector``): :func:`pipeline_model` is :class:`PipelineCfg` with one optional
field per registered task section, and :func:`validate` always uses it.

Loading order: the file's ``_base_`` chain (paths relative to the file that names them, merged
depth-first, later wins; a mapping with ``_delete_: true`` replaces instead of merging), then the
``--set`` overrides (values parsed as YAML scalars), then validation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError, create_model, model_validator

from fnatune.config.pipeline import PipelineBase
from fnatune.config.run import (
    DISTRIBUTIONS,
    AshaCfg,
    ResourcesCfg,
    SweepCfg,
    TrackingCfg,
    TuneCfg,
    VariantCfg,
)
from fnatune.config.sections import (
    AugmentCfg,
    CostCfg,
    DataCfg,
    DeriveCfg,
    EvaluateCfg,
    ExportCfg,
    FinetuneCfg,
    GenerateCfg,
    LRCfg,
    OptimCfg,
    PretrainCfg,
    RemapCfg,
    SearchCfg,
    Section,
    SeedCfg,
    Size,
    SplitCfg,
    TrainLoopCfg,
)
from fnatune.errors import FnatuneError


class ConfigError(FnatuneError):
    """A pipeline file that cannot be read or does not match the schema."""


class PipelineCfg(PipelineBase):
    """One adaptation run. ``space``, ``data.root`` and ``data.num_classes`` default to the task's."""

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """The task's defaults, filled in only where the file says nothing."""
        if not isinstance(data, dict):
            return data
        from fnatune.errors import UnknownNameError
        from fnatune.tasks import get_task, list_tasks

        name = data.get("task")
        if not isinstance(name, str):
            missing = [k for k in ("name", "task") if k not in data]
            if len(missing) > 1:  # an empty file, or one whose keys all sit under a wrong indentation
                raise ValueError(f"'name' and 'task' are required (e.g. name: my-run, task: seg; tasks: "
                                 f"{', '.join(list_tasks())}); the file sets {sorted(data) or 'nothing'}")
            raise ValueError(f"task: required, one of {', '.join(list_tasks())} (e.g. task: seg)")
        try:
            task = get_task(name)
        except UnknownNameError as e:
            raise ValueError(f"task: {e}") from None
        return deep_merge(task.defaults(data), data)

    @model_validator(mode="after")
    def _task_sections(self) -> PipelineCfg:
        from fnatune.tasks import get_task, list_tasks

        mine = get_task(self.task)
        for other in map(get_task, list_tasks()):
            if other.section and other is not mine and getattr(self, other.section, None) is not None:
                raise ValueError(f"'{other.section}' is only for task {other.name} (task is {self.task})")
        if mine.section and mine.section_required and getattr(self, mine.section, None) is None:
            raise ValueError(f"task is {self.task}, so '{mine.section}' must be given (e.g. {mine.section_example})")
        self._check_backend(mine)
        return self

    def _check_backend(self, task: Any) -> None:
        """The backend exists, the task runs on it, and its libraries are installed (checked without importing
        them, so `fnatune run` says so before Ray starts)."""
        from fnatune.tasks import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"backend: unknown backend '{self.backend}'; expected one of {', '.join(BACKENDS)}")
        if self.backend not in task.backends:
            raise ValueError(f"backend: task {self.task} runs on {', '.join(task.backends)} only, not {self.backend}")
        if self.backend == "mm":
            from fnatune.mm import missing

            lacking = missing()
            if lacking:
                raise ValueError(f"backend: mm needs OpenMMLab, and this environment lacks {', '.join(lacking)}; "
                                 "install it with `make install` (compiles mmcv 2.1; README: Installing the mm extra) "
                                 "or use backend: torchvision")

    def metric_name(self) -> str:
        """The metric sweeps optimise and summaries show: ``sweep.metric``, else the task's headline metric."""
        from fnatune.tasks import get_task

        return (self.sweep.metric if self.sweep and self.sweep.metric else None) or get_task(self.task).metric

    def task_section(self) -> Any:
        """This run's task section (detection's ``detector``), or None for a task without one."""
        from fnatune.tasks import get_task

        section = get_task(self.task).section
        return getattr(self, section) if section else None


_MODELS: dict[tuple[tuple[str, type[BaseModel]], ...], type[PipelineCfg]] = {}


def pipeline_model() -> type[PipelineCfg]:
    """:class:`PipelineCfg` with an optional field for every registered task's section."""
    from fnatune.tasks import get_task, list_tasks

    sections = tuple((t.section, t.section_model) for t in map(get_task, list_tasks())
                     if t.section and t.section_model)
    if sections not in _MODELS:
        for t in map(get_task, list_tasks()):
            if t.section in PipelineCfg.model_fields:
                raise ValueError(f"task '{t.name}': its section '{t.section}' is already a pipeline key")
        fields: dict[str, Any] = {name: (Optional[model], None) for name, model in sections}  # noqa: UP045
        _MODELS[sections] = create_model("PipelineCfg", __base__=PipelineCfg, __module__=__name__, **fields)
    return _MODELS[sections]


# ---------------------------------------------------------------------------------------------- loading
class _DuplicateKey(yaml.YAMLError):
    """A mapping that names one key twice."""


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key written twice in one mapping: YAML keeps the last one silently,
    so ``lr: 0.1`` then ``lr: 0.01`` further down would run with a value the user may not have meant."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"key '{key}' is written twice in one mapping (lines {seen[key]} and {line}); "
                                    "YAML would keep the second silently: keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: Path, what: str = "pipeline file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (``{}`` when empty), or one :class:`ConfigError` line that
    names the file: missing, unreadable, not YAML, a key written twice, or a top level that is no mapping."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        what = "; ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"{path}{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as a text file ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and v.get("_delete_"):
            out[k] = {kk: vv for kk, vv in v.items() if kk != "_delete_"}
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file merged over its ``_base_`` chain, unvalidated."""
    path = Path(path).resolve()
    if path.suffix == ".py":
        raise ConfigError(f"{path} is a Python file, an OpenMMLab config (pipelines/mm/ holds two), not a pipeline YAML: "
                          "run it with mmdet's or mmseg's own tools (`python tools/train.py ...`, the mm extra), or "
                          "run a pipeline YAML with `backend: mm`")
    if path in _seen:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    data = read_yaml_mapping(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths")
    merged: dict[str, Any] = {}
    for b in bases:
        merged = deep_merge(merged, load_raw(path.parent / b, (*_seen, path)))
    return deep_merge(merged, data)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply ``a.b=c`` strings (values parsed as YAML) or a ``{"a.b": value}`` mapping."""
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    out = dict(raw)
    for key, value in items:
        parts = key.split(".")
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is a value, not a section")
            node[p] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. search.epochs=4), got '{text}'")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got '{text}'")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        return key.strip(), value


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the pipeline config:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not loc and e["type"] == "value_error":  # a check across keys: its message names them itself
            lines.append(f"  {msg}")
            continue
        loc = loc or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not part of the schema; check the spelling)"
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def validate(raw: dict[str, Any], source: str = "<config>") -> PipelineCfg:
    try:
        return pipeline_model().model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineCfg:
    raw = apply_overrides(load_raw(path), overrides or [])
    return validate(raw, f"{path}" + (" (after --set overrides)" if overrides else ""))


def dump_config(cfg: PipelineCfg) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)


def flatten(cfg: PipelineCfg) -> dict[str, Any]:
    """``{"search.epochs": 14, ...}`` for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json", by_alias=True, exclude={"variants", "sweep"}))
    return out


def check_sweep_keys(cfg: PipelineCfg, source: str = "<config>") -> None:
    """Every swept key must be a setting of the pipeline (named in the error when it is not), and every
    value of a grid must give a valid config."""
    if cfg.sweep is None:
        return
    known = flatten(cfg)
    for key in cfg.sweep.params:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
            raise ConfigError(f"{source}: sweep.params: '{key}' is not a key of the pipeline config{hint}")
    if cfg.sweep.method == "grid":
        raw = cfg.model_dump(mode="json", by_alias=True)
        raw.pop("sweep")
        for key, values in cfg.sweep.params.items():
            for v in values:
                validate(apply_overrides(raw, {key: v}), f"{source} (sweep.params.{key} = {v!r})")


__all__ = [
    "DISTRIBUTIONS", "AshaCfg", "AugmentCfg", "ConfigError", "CostCfg", "DataCfg", "DeriveCfg", "EvaluateCfg", "ExportCfg",
    "FinetuneCfg", "GenerateCfg", "LRCfg", "OptimCfg", "PipelineCfg", "PretrainCfg", "RemapCfg", "ResourcesCfg",
    "SearchCfg", "Section", "SeedCfg", "Size", "SplitCfg", "SweepCfg", "TrackingCfg", "TrainLoopCfg", "TuneCfg",
    "VariantCfg", "apply_overrides", "check_sweep_keys", "deep_merge", "dump_config", "flatten", "load_config",
    "load_raw", "pipeline_model", "read_yaml_mapping", "validate",
]

"""Pipeline YAML: schema (pydantic), ``_base_`` inheritance and ``--set a.b=c`` overrides.

Every section forbids unknown keys, so a typo is an error that names the file and the key path instead
of a silently ignored setting. Defaults are the paper's recipes (FNA_SPEC §5.6, §6.3); the seg search
recipe was never released, and its defaults follow FNA_SPEC §11 (mirror the detection search).

Loading order: the file's ``_base_`` chain (paths relative to the file that names them, merged
depth-first, later wins; a mapping with ``_delete_: true`` replaces instead of merging), then the
``--set`` overrides (values parsed as YAML scalars), then validation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fnatune.errors import FnatuneError


class ConfigError(FnatuneError):
    """A pipeline file that cannot be read or does not match the schema."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Size = tuple[int, int]


class OptimCfg(_Model):
    name: Literal["sgd", "rmsprop", "adam", "adamw"] = "sgd"
    lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(35.0, gt=0)


# Each optimiser/augmentation slot has its own class so that its defaults hold key by key: a YAML
# that writes only `optim: {name: adam}` keeps the slot's other defaults (not a generic class's).
class PretrainOptimCfg(OptimCfg):
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(4e-5, ge=0)
    grad_clip: float | None = Field(None, gt=0)


class SearchWeightOptimCfg(OptimCfg):
    """FNA RetinaNet search weights: SGD 0.02, momentum 0.9, wd 1e-4, clip 35 (FNA_SPEC §5.6)."""


class SearchArchOptimCfg(OptimCfg):
    """FNA's alpha optimiser: Adam 3e-4, betas (0.5, 0.999), wd 1e-3, clip 35."""

    name: Literal["sgd", "rmsprop", "adam", "adamw"] = "adam"
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(1e-3, ge=0)


class FinetuneOptimCfg(OptimCfg):
    """FNA_SPEC §6.3: SGD 0.01, momentum 0.9, wd 5e-4, no clipping."""

    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    grad_clip: float | None = Field(None, gt=0)


class TrackingCfg(_Model):
    uri: str | None = None           # default: sqlite:///<cwd>/mlflow.db
    experiment: str = "fnatune"
    enabled: bool = True


class SeedCfg(_Model):
    name: str = "mobilenet_v2"
    weights: str | None = "pretrain"  # "pretrain", None (random init), a checkpoint path, or a torchvision name
    options: dict[str, Any] = Field(default_factory=dict)


class PretrainCfg(_Model):
    """Seed pretraining on a generated classification set, for machines without ImageNet weights."""

    data_root: str = "data/synthetic_cls"
    num_classes: int = Field(6, ge=2, le=12)
    per_class_train: int = Field(60, ge=1)
    per_class_val: int = Field(10, ge=1)
    size: int = Field(64, ge=16)
    iters: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=2)
    optim: PretrainOptimCfg = Field(default_factory=PretrainOptimCfg)
    cache_dir: str | None = None      # default: $FNATUNE_CACHE or ~/.cache/fnatune


class GenerateCfg(_Model):
    num_train: int = Field(24, ge=2)
    num_val: int = Field(8, ge=1)
    size: Size = (128, 256)
    seed: int = 0
    max_objects: int = Field(4, ge=1)  # det only: objects per image at most


class DataCfg(_Model):
    """seg: a Cityscapes layout at ``root``; det: a COCO layout (``train2017/``, ``val2017/``,
    ``annotations/instances_{train,val}2017.json``). Defaults of root/num_classes follow the task."""

    root: str = "data/cityscapes"
    generate: GenerateCfg | None = None  # write a synthetic set in the task's layout into root first
    num_classes: int = Field(19, ge=1)
    ignore_index: int = 255
    check_labels: bool = True
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    num_workers: int = Field(0, ge=0)


class RemapCfg(_Model):
    width: Literal["index", "bn_gamma"] = "index"
    kernel: Literal["centre", "dilation"] = "centre"
    noise: bool = False
    noise_scale: float = Field(1e-5, ge=0)
    noise_region: Literal["new", "all"] = "new"


class CostCfg(_Model):
    model: Literal["madds", "latency"] = "madds"
    input: Size | None = None         # default: the space's task resolution (seg 1024x2048)
    lam: float = Field(0.02, ge=0, alias="lambda")
    log_base: float = Field(10.0, gt=1)
    # Not FNA: a target cost (in the table's unit) turns the term into lambda * |log_tau(C / target)|, which
    # pulls E[cost] towards the target from both sides. None (default) is FNA's lambda * log_tau(C).
    target: float | None = Field(None, gt=0)
    device: str = "cpu"               # latency tables: device to time on
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    repeats: int = Field(10, ge=1)
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SplitCfg(_Model):
    fraction: float = Field(0.5, gt=0, lt=1)
    seed: int = 520
    arch_data: Literal["augmented", "plain"] = "augmented"  # FNA code: augmented half -> arch steps


class LRCfg(_Model):
    policy: Literal["constant", "step", "poly", "cosine"] = "step"
    milestones: list[int] = Field(default_factory=lambda: [8, 11])  # epochs
    gamma: float = 0.1
    power: float = 0.9
    warmup_iters: int = Field(500, ge=0)
    warmup_ratio: float = Field(1 / 3, gt=0, le=1)


class AugmentCfg(_Model):
    """seg uses crop/scales/flip; det uses scale/keep_ratio/flip/ssd_augment (and evaluates at the
    fine-tune's scale, as FNA tests at its training size)."""

    crop: Size = (769, 769)
    scales: list[float] = Field(default_factory=lambda: [0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    flip: float = Field(0.5, ge=0, le=1)
    scale: Size = (800, 1333)         # det: (h, w) to resize to (RetinaNet 800x1333 keep-ratio; SSDLite 320x320)
    keep_ratio: bool = True
    ssd_augment: bool = False         # det: photometric distortion + expand 1-4x + min-IoU crop (SSDLite)


class SearchAugmentCfg(AugmentCfg):
    crop: Size = (513, 513)


class SearchCfg(_Model):
    enabled: bool = True
    init: Literal["remap", "random"] = "remap"
    epochs: int = Field(14, ge=1)
    warmup_epochs: int = Field(8, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1)
    arch_steps: int = Field(1, ge=1)
    weight_steps: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    sample_temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(2, ge=1)
    repeat: int = Field(1, ge=1)      # an epoch = repeat x the arch split's batches (SSDLite: RepeatDataset x5)
    augment: SearchAugmentCfg = Field(default_factory=SearchAugmentCfg)
    cost: CostCfg = Field(default_factory=CostCfg)
    split: SplitCfg = Field(default_factory=SplitCfg)
    weight_optim: SearchWeightOptimCfg = Field(default_factory=SearchWeightOptimCfg)
    arch_optim: SearchArchOptimCfg = Field(default_factory=SearchArchOptimCfg)
    weight_lr: LRCfg = Field(default_factory=LRCfg)
    checkpoint_every: int = Field(100, ge=0)

    @model_validator(mode="after")
    def _warmup(self) -> SearchCfg:
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        return self


class FinetuneCfg(_Model):
    init: Literal["remap", "random", "supernet"] = "remap"
    iters: int = Field(100_000, ge=1)
    batch_size: int = Field(16, ge=1)
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    optim: FinetuneOptimCfg = Field(default_factory=FinetuneOptimCfg)
    policy: Literal["constant", "step", "poly", "cosine"] = "poly"
    power: float = 0.9
    milestones: list[int] = Field(default_factory=list)
    warmup_iters: int = Field(5000, ge=0)
    warmup_ratio: float = Field(0.01, gt=0, le=1)
    log_every: int = Field(50, ge=1)
    eval_every: int = Field(0, ge=0)
    checkpoint_every: int = Field(1000, ge=1)
    amp: Literal["none", "bf16", "fp16"] = "none"


class EvaluateCfg(_Model):
    mode: Literal["whole", "slide"] = "slide"
    crop: Size = (769, 769)
    stride: Size = (513, 513)
    max_images: int | None = Field(None, ge=1)


class ExportCfg(_Model):
    onnx: bool = True
    input: Size | None = None   # default: the finetune crop
    opset: int = Field(17, ge=11)


class DetectorCfg(_Model):
    """Detection head and post-processing; None = the detector's recipe (FNA_SPEC §6.1, §6.2)."""

    type: Literal["retinanet", "ssdlite"] = "retinanet"
    score_thr: float | None = Field(None, ge=0, le=1)    # retinanet 0.05, ssdlite 0.02
    nms_iou: float | None = Field(None, gt=0, le=1)      # 0.5 / 0.6
    max_per_img: int | None = Field(None, ge=1)          # 100 / 200
    nms_pre: int = Field(1000, ge=1)
    channels: int = Field(256, ge=8)                     # retinanet FPN and head width (the paper: 256)


class ResourcesCfg(_Model):
    """What one trial asks of the Ray cluster. ``workers`` > 1 runs the search and the fine-tune data-parallel
    inside the trial (Ray Train; each worker gets ``cpu``/``gpu``, so the trial holds workers x that)."""

    cpu: float | None = Field(None, gt=0)  # None: all CPUs of this machine for one run, 1 per trial in a sweep
    gpu: float = Field(0.0, ge=0)
    workers: int = Field(1, ge=1)


class TuneCfg(_Model):
    """How Ray Tune runs the trials: retries from the last checkpoint, how long a trial may wait for
    resources before the run stops with a message (instead of waiting forever), and how often a stage
    checkpoint is also copied into Tune's storage (``checkpoint_every_s``: at most once per that many
    seconds; 0 copies every one). The copy is what a retry on another node restores from; a retry on the
    same node, and ``fnatune resume``, use the trial directory's own newer checkpoint."""

    retries: int = Field(2, ge=0)
    pending_timeout_s: float = Field(600.0, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_every_s: float = Field(60.0, ge=0)


class AshaCfg(_Model):
    """Asynchronous successive halving over the search epochs (``metric`` as reported each epoch)."""

    metric: str = "search_arch_task_loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class SweepCfg(_Model):
    """Many trials of one pipeline. ``params`` maps dotted config keys to values: a list (grid: every
    combination) or, for optuna, a distribution ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
    ``{randint: [lo, hi]}`` (hi exclusive) or ``{choice: [...]}``."""

    method: Literal["grid", "optuna"] = "grid"
    params: dict[str, Any] = Field(min_length=1)
    objectives: list[Literal["metric", "cost"]] = Field(default_factory=lambda: ["metric"], min_length=1, max_length=2)
    metric: str | None = None          # default: the task's metric (seg mIoU, det bbox_mAP)
    sampler: Literal["tpe", "nsga2"] | None = None  # default: tpe for one objective, nsga2 for two
    num_samples: int = Field(4, ge=1)  # optuna: trials to draw (grid: ignored)
    max_concurrent: int | None = Field(None, ge=1)
    asha: AshaCfg | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _params(self) -> SweepCfg:
        for key, spec in self.params.items():
            if self.method == "grid" and not (isinstance(spec, list) and spec):
                raise ValueError(f"params.{key}: a grid sweep needs a non-empty list of values, got {spec!r}")
            if self.method == "optuna" and not (isinstance(spec, list) and spec) and not (
                    isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
                raise ValueError(f"params.{key}: expected a list of choices or one of "
                                 f"{{{', '.join(f'{d}: [...]' for d in DISTRIBUTIONS)}}}, got {spec!r}")
        if self.sampler == "tpe" and len(self.objectives) > 1:
            raise ValueError("two objectives need sampler nsga2 (TPE here optimises one objective)")
        if self.asha is not None and len(self.objectives) > 1:
            raise ValueError("asha stops trials on one metric; it cannot be combined with two objectives")
        return self


DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")


class VariantCfg(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    set: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


class PipelineCfg(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    task: Literal["seg", "det"] = "seg"
    detector: DetectorCfg | None = None  # task det: which detector (required)
    seed: int = 1
    device: str = "cpu"
    space: str = "mbv2_seg"
    arch: str | None = None           # with search.enabled false: an arch JSON, or "seed" (the seed's own layout)
    seed_net: SeedCfg = Field(default_factory=SeedCfg)
    pretrain: PretrainCfg = Field(default_factory=PretrainCfg)
    data: DataCfg = Field(default_factory=DataCfg)
    remap: RemapCfg = Field(default_factory=RemapCfg)
    search: SearchCfg = Field(default_factory=SearchCfg)
    finetune: FinetuneCfg = Field(default_factory=FinetuneCfg)
    evaluate: EvaluateCfg = Field(default_factory=EvaluateCfg)
    export: ExportCfg = Field(default_factory=ExportCfg)
    tracking: TrackingCfg = Field(default_factory=TrackingCfg)
    variants: list[VariantCfg] = Field(default_factory=list)
    resources: ResourcesCfg = Field(default_factory=ResourcesCfg)
    tune: TuneCfg = Field(default_factory=TuneCfg)
    sweep: SweepCfg | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not v.startswith("cuda"):
            raise ValueError(f"expected 'cpu', 'cuda' or 'cuda:N', got '{v}'")
        return v

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Defaults that depend on the task, filled in only where the file says nothing."""
        if not isinstance(data, dict) or data.get("task") != "det":
            return data
        out = dict(data)
        det = out.get("detector") if isinstance(out.get("detector"), dict) else {}
        out.setdefault("space", "mbv2_ssdlite" if det.get("type") == "ssdlite" else "mbv2_det")
        d = dict(out["data"]) if isinstance(out.get("data"), dict) else {}
        d.setdefault("root", "data/coco")
        d.setdefault("num_classes", 80)
        out["data"] = d
        return out

    @model_validator(mode="after")
    def _task(self) -> PipelineCfg:
        if self.task == "det" and self.detector is None:
            raise ValueError("task is det, so 'detector' must be given (e.g. detector: {type: retinanet})")
        if self.task != "det" and self.detector is not None:
            raise ValueError(f"'detector' is only for task det (task is {self.task})")
        return self

    @model_validator(mode="after")
    def _arch_source(self) -> PipelineCfg:
        if not self.search.enabled and self.arch is None:
            raise ValueError("search.enabled is false, so 'arch' must name an arch JSON file or 'seed'")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if self.variants and self.sweep is not None:
            raise ValueError("use either 'variants' (named ablations) or 'sweep', not both in one pipeline")
        return self


# ---------------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
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
    if path in _seen:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    data = _read_yaml(path)
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
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not part of the schema; check the spelling)"
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def validate(raw: dict[str, Any], source: str = "<config>") -> PipelineCfg:
    try:
        return PipelineCfg.model_validate(raw)
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

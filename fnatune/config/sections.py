"""The sections of a pipeline config that the learning loops read (torch-free, pydantic).

Each section is the one schema of its settings: the search loop takes :class:`SearchCfg`, the training
loop a :class:`TrainLoopCfg` (:class:`FinetuneCfg`, or the one :meth:`PretrainCfg.loop` builds), remapping
:class:`RemapCfg`, the optimisers :class:`OptimCfg`. Defaults are the paper's recipes (FNA_SPEC §5.6, §6.3).
Every section forbids unknown keys, so a typo is an error that names the key path.
"""
from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

INT64_MAX = 2**63 - 1


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _ints(v)]
    return []


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type names ``bool`` anywhere (``bool``, ``bool | None``, ``list[bool]``, ``Any``)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    if origin is not None or isinstance(annotation, types.UnionType):
        return any(_admits_bool(a) for a in typing.get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)  # a section checks its own fields


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, no number is infinite
    or NaN (``lr: .inf``), no number or size is given as ``true``/``false`` (pydantic would read them as 1 and 0:
    ``warmup_epochs: true`` is a mistake, not one epoch), and no count is beyond what torch's 64-bit step
    counters hold (``finetune.iters=99999999999999999999`` is a typo, not a plan)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)):
            field = cls.model_fields.get(info.field_name or "")
            if field is not None and not _admits_bool(field.annotation):
                raise ValueError("expected a number or a name, not true/false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int64(cls, value: Any) -> Any:
        if any(abs(i) > INT64_MAX for i in _ints(value)):
            raise ValueError(f"too large for a 64-bit counter (at most {INT64_MAX:,})")
        return value


Size = tuple[int, int]
WidthRule = Literal["index", "bn_gamma", "std", "l1"]
KernelRule = Literal["centre", "dilation"]
NoiseRegion = Literal["new", "all"]
GroupRule = Literal["block_diagonal", "leading"]
Policy = Literal["constant", "step", "poly", "cosine"]


class OptimCfg(Section):
    """An optimiser recipe. ``grad_clip`` is the max L2 norm of the gradients (None: no clipping)."""

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


class TrainLoopCfg(Section):
    """What the training loop (:class:`fnatune.train.Trainer`) reads. Iteration-based like the paper's
    recipes; ``milestones`` are iterations (step policy); metrics are logged every ``log_every``."""

    iters: int = Field(100_000, ge=1)
    optim: OptimCfg = Field(default_factory=FinetuneOptimCfg)
    policy: Policy = "poly"
    power: float = 0.9
    milestones: list[int] = Field(default_factory=list)
    gamma: float = 0.1
    warmup_iters: int = Field(5000, ge=0)
    warmup_ratio: float = Field(0.01, gt=0, le=1)
    log_every: int = Field(50, ge=1)
    eval_every: int = Field(0, ge=0)
    checkpoint_every: int = Field(1000, ge=1)
    amp: Literal["none", "bf16", "fp16"] = "none"
    # FNA_SPEC §13.2: before the first step, the BN statistics of the whole model are recomputed over this
    # many training batches (cumulative average, weights frozen, no optimiser step). 0 = off.
    bn_recalibration_iters: int = Field(0, ge=0)


class SeedCfg(Section):
    name: str = "mobilenet_v2"
    weights: str | None = "pretrain"  # "pretrain", None (random init), a checkpoint path, or a torchvision name
    options: dict[str, Any] = Field(default_factory=dict)


class PretrainCfg(Section):
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

    def loop(self) -> TrainLoopCfg:
        """The training loop of the pretraining: cosine LR with a short warm-up, ten log points, four checkpoints."""
        return TrainLoopCfg(iters=self.iters, optim=self.optim, policy="cosine", warmup_iters=min(50, self.iters // 10),
                            log_every=max(self.iters // 10, 1), checkpoint_every=max(self.iters // 4, 1))


class GenerateCfg(Section):
    num_train: int = Field(24, ge=2)
    num_val: int = Field(8, ge=1)
    size: Size = (128, 256)
    seed: int = 0
    max_objects: int = Field(4, ge=1)  # det: objects per image at most; pose: people per image at most


class DataCfg(Section):
    """Where the task's data lies, in the task's layout (seg: Cityscapes; det: COCO). ``root`` and
    ``num_classes`` default to the task's (:mod:`fnatune.tasks`)."""

    root: str
    generate: GenerateCfg | None = None  # write a synthetic set in the task's layout into root first
    num_classes: int = Field(ge=1)
    ignore_index: int = 255
    check_labels: bool = True
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    num_workers: int = Field(0, ge=0)


class RemapCfg(Section):
    """Which remapping rules to use (FNA_SPEC §4). The defaults are FNA's; the others are the paper's ablations.

    ``noise`` is FNA++'s "zero with slight noise" for entries that have no seed counterpart: ``noise_scale``
    x a Kaiming-uniform sample, added to the new entries only (``noise_region="new"``) or, as the
    maintainer's snippet does, to the whole tensor (``"all"``). Conv weights only.

    ``group`` maps a conv into one with other groups (FNA++'s group remapping, FNA_SPEC §4.6): output channel
    o of the target keeps the seed's weights on the inputs both its target group and its seed group see
    (``block_diagonal``, the default; exact from a grouped seed into fewer groups), or, from a dense seed,
    on the first inputs of its group's width (``leading``, option a of §4.6).

    ``width`` (FNA_SPEC §4.3, §13.3): which seed channels fill a narrower target, all in ascending index
    order (Algorithm 1: ``sort(topk_indices(v, k))``): ``index`` the first k (FNA's code), ``bn_gamma`` the k
    with the largest ``|gamma|`` of the BN that scales them (Width-BN), ``std`` / ``l1`` the k whose seed
    filters have the largest standard deviation / L1 norm (Width-Std / Width-L1).

    ``random_init`` is what ``search.init: random`` / ``finetune.init: random`` ("without remapping") mean:
    every conv and linear weight of the backbone drawn from a standard normal distribution, as the paper
    states (``normal``, FNA_SPEC §13.3), or torch's own module init (``kaiming``).
    """

    width: WidthRule = "index"
    kernel: KernelRule = "centre"
    group: GroupRule = "block_diagonal"
    noise: bool = False
    noise_scale: float = Field(1e-5, ge=0)
    noise_region: NoiseRegion = "new"
    random_init: Literal["normal", "kaiming"] = "normal"


class CostCfg(Section):
    model: Literal["madds", "latency"] = "madds"
    input: Size | None = None         # default: the space's task resolution (seg 1024x2048)
    lam: float = Field(0.02, ge=0, alias="lambda")
    log_base: float = Field(10.0, gt=1)
    # The cost term is lambda * log_tau(gamma * C) (FNA_SPEC §13.1: the ICLR seg recipe's gamma = 10; the
    # detection code has no gamma, i.e. 1). C is E[cost] in the table's unit: GMAdds of the searchable
    # layers at ``input`` (MAdds tables) or milliseconds (latency tables).
    gamma: float = Field(1.0, gt=0)
    # Not FNA: a target cost (in the table's unit) turns the term into lambda * |log_tau(C / target)|, which
    # pulls E[cost] towards the target from both sides. None (default) is FNA's lambda * log_tau(C).
    target: float | None = Field(None, gt=0)
    device: str = "cpu"               # latency tables: device to time on
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    repeats: int = Field(10, ge=1)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class SplitCfg(Section):
    fraction: float = Field(0.5, gt=0, lt=1)
    seed: int = 520
    # Which half feeds the arch steps, and with which pipeline. FNA's detection code: the augmented part
    # (``fraction`` of the images) -> arch steps, the rest without augmentation -> weight steps ("augmented");
    # or the other way round ("plain"); or both parts with the train pipeline ("both": the ICLR seg recipe,
    # one resize-and-crop pipeline for all search data, ``fraction`` of it for the arch steps).
    arch_data: Literal["augmented", "plain", "both"] = "augmented"


class LRCfg(Section):
    """Weight-LR schedule of the search; ``milestones`` are in epochs (the loop converts them to iterations)."""

    policy: Policy = "step"
    milestones: list[int] = Field(default_factory=lambda: [8, 11])
    gamma: float = 0.1
    power: float = 0.9
    warmup_iters: int = Field(500, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)  # when set, the warm-up length in epochs (replaces warmup_iters)
    warmup_ratio: float = Field(1 / 3, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)  # where poly and cosine end (the ICLR seg search: cosine to 1e-3)


class AugmentCfg(Section):
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


class DeriveCfg(Section):
    """How the final arch is read off the search (not FNA's unless ``argmax``; issue 27).

    ``argmax`` (FNA, §5.7): the most probable op per layer. ``paths``: the ``top_k`` most probable paths of
    softmax(alpha) (their ranking does not depend on the temperature), each run single-path on ``batches`` batches
    of the arch split with the super net's weights (BN on batch statistics, as in the weight steps; its running
    statistics are left as they were) and scored by the search's own objective, the task loss plus
    lambda * cost term of the path's cost; the lowest score wins. The argmax path is always among them, so
    ``paths`` only departs from FNA where the super net itself prefers another of the likely paths.
    """

    method: Literal["argmax", "paths"] = "argmax"
    top_k: int = Field(8, ge=1)
    batches: int = Field(4, ge=1)


class SearchCfg(Section):
    """The FNA++ search (:class:`fnatune.search.Searcher` reads this section). One epoch is
    ``steps_per_epoch`` weight steps (default: ``repeat`` x the arch split's batches, as FNA)."""

    enabled: bool = True
    init: Literal["remap", "random"] = "remap"
    epochs: int = Field(14, ge=1)
    warmup_epochs: int = Field(8, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1)
    arch_steps: int = Field(1, ge=1)
    weight_steps: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)         # mixing softmax(alpha/T) in arch steps and in E[cost]
    # Not FNA: anneal the mixing temperature geometrically, epoch by epoch, from ``temperature`` at the first
    # searching epoch to this at the last, so the mixed net the arch steps train nears the single path that will
    # be derived. None (default): constant, as FNA.
    temperature_final: float | None = Field(None, gt=0)
    sample_temperature: float = Field(1.0, gt=0)  # path sampling softmax(alpha/T) in weight steps
    # arch steps recompute, in the backward pass, the candidates of the mixed layers that hold this share of
    # the activations instead of keeping them (same gradients; 0.7: peak 1.7x a single path's instead of 6x, for
    # 1.3x the arch step's time; 0 keeps everything, 1 recomputes every layer: benchmarks/search_memory.py)
    recompute_mixed: float = Field(0.7, ge=0, le=1)
    batch_size: int = Field(2, ge=1)
    repeat: int = Field(1, ge=1)      # an epoch = repeat x the arch split's batches (SSDLite: RepeatDataset x5)
    augment: SearchAugmentCfg = Field(default_factory=SearchAugmentCfg)
    cost: CostCfg = Field(default_factory=CostCfg)
    split: SplitCfg = Field(default_factory=SplitCfg)
    weight_optim: SearchWeightOptimCfg = Field(default_factory=SearchWeightOptimCfg)
    arch_optim: SearchArchOptimCfg = Field(default_factory=SearchArchOptimCfg)
    weight_lr: LRCfg = Field(default_factory=LRCfg)
    derive: DeriveCfg = Field(default_factory=DeriveCfg)
    checkpoint_every: int = Field(100, ge=0)

    @model_validator(mode="after")
    def _warmup(self) -> SearchCfg:
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        return self


class FinetuneCfg(TrainLoopCfg):
    """Parameter adaptation: the training loop's settings plus the target's init and the data it sees.

    ``init``: ``remap`` (FNA), ``random`` (seeded random init), ``supernet`` (the searched super net's weights
    of the derived path), ``pretrained`` (the derived arch itself trained from scratch with the ``pretrain``
    section's classification recipe: Table 5's "ImageNet-pretrained target" where ImageNet cannot be had).
    """

    init: Literal["remap", "random", "supernet", "pretrained"] = "remap"
    batch_size: int = Field(16, ge=1)
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    optim: FinetuneOptimCfg = Field(default_factory=FinetuneOptimCfg)


class EvaluateCfg(Section):
    mode: Literal["whole", "slide"] = "slide"
    crop: Size = (769, 769)
    stride: Size = (513, 513)
    max_images: int | None = Field(None, ge=1)


class ExportCfg(Section):
    onnx: bool = True
    input: Size | None = None   # default: the task's (the finetune crop or scale)
    opset: int = Field(17, ge=11)

"""Reading the final architecture off a finished search (``search.derive``; FNA_SPEC §5.7 and issue 27).

FNA takes the most probable op of every layer (``argmax``). A differentiable search's alpha often leaves several
ops of a layer close to one another, and the argmax of independent per-layer distributions is then decided by
small differences that other search seeds turn the other way (the search-quality benchmark's archs agree on about
half of their layers). ``paths`` asks the trained super net instead: it lists the ``top_k`` most probable paths of
softmax(alpha), runs each single-path on a few batches of the arch split, and keeps the one with the best value of
the search's own objective (task loss + lambda * cost term). Its weights were trained on exactly such single paths.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.config.sections import CostCfg, DeriveCfg
from fnatune.errors import ArchError, FnatuneError
from fnatune.nets import SuperNet

__all__ = ["Derivation", "derive", "score_paths", "top_paths"]


@dataclass
class Derivation:
    """The derived arch and, for ``paths``, every arch that was scored, best first (``rank``: its place among the
    scored archs by probability, 0 = the argmax)."""

    arch: Arch
    method: str
    scored: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "arch": self.arch.block_string(), "scored": self.scored}


def top_paths(alphas: Sequence[Tensor], k: int) -> list[tuple[list[int], float]]:
    """The ``k`` most probable paths of independent softmax(alpha) per layer, with their log-probabilities, most
    probable first (ties: lower indices first). Exact: a beam of width ``k`` over the layers loses no path of the
    top ``k``, since a prefix outside the best ``k`` prefixes has ``k`` better prefixes, each of which completes
    with the same suffix into a better path. The ranking is the same at any temperature (log softmax(alpha / T)
    sums to sum(alpha) / T minus a constant)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    beam: list[tuple[float, list[int]]] = [(0.0, [])]
    for a in alphas:
        logp = torch.log_softmax(a.detach().double().cpu(), dim=-1).tolist()
        grown = [(lp + logp[i], path + [i]) for lp, path in beam for i in range(len(logp))]
        # sort key: probability (descending), then the path itself (ascending) so that ties are deterministic
        beam = heapq.nsmallest(k, grown, key=lambda t: (-t[0], t[1]))
    return [(path, lp) for lp, path in beam]


def _bn_buffers(model: nn.Module) -> dict[str, Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def score_paths(model: nn.Module, supernet: SuperNet, loss_fn: Callable[[Any], Tensor], batches: Sequence[Any],
                paths: Sequence[Sequence[int]], cost_of: Callable[[Sequence[int]], float],
                cost_term: Callable[[Tensor], Tensor], lam: float,
                reduce: Callable[[list[float]], list[float]] | None = None) -> list[dict[str, float]]:
    """Each path's mean task loss over ``batches`` (train-mode forward, no gradient), its cost and its score
    (loss + lam * cost_term(cost)). The model's buffers (BN running statistics) are restored afterwards, so
    scoring leaves the super net exactly as the search left it. ``reduce`` averages the losses over data-parallel
    workers (each scored its own shard)."""
    saved = _bn_buffers(model)
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        with torch.no_grad():
            for path in paths:
                supernet.use_path(path)
                total = 0.0
                for batch in batches:
                    total += float(loss_fn(batch))
                losses.append(total / len(batches))
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
        model.train(was_training)
    if reduce is not None:
        losses = reduce(losses)
    out = []
    for path, loss in zip(paths, losses):
        cost = float(cost_of(path))
        term = float(cost_term(torch.tensor(cost, dtype=torch.float64)))
        out.append({"task_loss": loss, "cost": cost, "score": loss + lam * term})
    return out


def derive(settings: DeriveCfg, supernet: SuperNet, *, model: nn.Module | None = None,
           loss_fn: Callable[[Any], Tensor] | None = None, next_batch: Callable[[], Any] | None = None,
           cost_table: Any = None, cost: CostCfg | None = None,
           cost_term: Callable[[Tensor], Tensor] | None = None,
           reduce: Callable[[list[float]], list[float]] | None = None) -> Derivation:
    """The arch the search's ``derive`` settings ask for. ``argmax`` needs only the super net (FNA's derivation,
    :meth:`SuperNet.derive`); ``paths`` also needs the model, its loss, the arch split (``next_batch``), the cost
    table and the cost term of the search."""
    if settings.method == "argmax":
        return Derivation(supernet.derive(), "argmax")
    if model is None or loss_fn is None or next_batch is None or cost_table is None or cost is None or cost_term is None:
        raise FnatuneError("search.derive.method 'paths' needs the search's model, loss, arch split and cost table")
    # more paths than top_k, as several paths can sort their skips into the same arch
    ranked = top_paths(supernet.arch_parameters(), settings.top_k * 4)
    chosen: dict[str, tuple[list[int], float, Arch]] = {}
    for path, logp in ranked:
        arch = supernet.arch_of(path).sorted_skips()
        key = arch.block_string()
        if key in chosen:
            continue
        try:  # run the arch that will be kept (skips at the stage ends) where the super net has its ops there
            run = cost_table.indices_of(arch)
        except ArchError:
            run = path
        chosen[key] = (list(run), logp, arch)
        if len(chosen) == settings.top_k:
            break
    batches = [next_batch() for _ in range(settings.batches)]
    entries = list(chosen.values())
    scores = score_paths(model, supernet, loss_fn, batches, [e[0] for e in entries], cost_table.of_indices,
                         cost_term, cost.lam, reduce)
    scored = [{"arch": e[2].block_string(), "log_prob": e[1], "rank": i, **sc}
              for i, (e, sc) in enumerate(zip(entries, scores))]
    order = sorted(range(len(scored)), key=lambda i: (scored[i]["score"], i))  # ties: the more probable arch
    return Derivation(entries[order[0]][2], "paths", [scored[i] for i in order])

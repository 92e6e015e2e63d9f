"""BN recalibration (FNA_SPEC §13.2): after remapping, recompute the BN statistics of a network before its
fine-tune, because the remapped target's running means and variances are the seed's, measured on another
network and another data set.

Every BN layer's running statistics are reset and re-estimated as a plain (cumulative) average over ``iters``
training batches in train mode, with autograd off and no optimiser step, so the parameters, the optimiser and
everything but ``running_mean``/``running_var``/``num_batches_tracked`` stay as they were.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BN layers (any dimension, SyncBN included) that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, forward: Callable[[], object], iters: int) -> int:
    """Reset every BN's running statistics and re-estimate them over ``iters`` calls of ``forward`` (which
    runs ``model`` on the next training batch). Returns the number of BN layers recalibrated."""
    bns = batch_norms(model)
    if iters <= 0 or not bns:
        return len(bns)
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for _ in range(iters):
            forward()
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return len(bns)

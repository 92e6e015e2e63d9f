"""Plain-torch task heads on top of a backbone: the seed's own classifier (:mod:`fnatune.heads.cls`) and FNA's
DeepLabv3 head (:mod:`fnatune.heads.seg`). They need no OpenMMLab, so costs and conformance checks run
anywhere; the OpenMMLab adapters (:mod:`fnatune.mm`) wrap the same modules for training."""

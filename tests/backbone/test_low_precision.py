"""A backbone cast to bf16 (or fp16): VQT keeps fp32 master queries and an fp32 head, the backbone and the query
path compute in the backbone's dtype, and the result stays within a stated tolerance of the fp32 model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.tiny_models import tiny_vit
from vqt.methods.vqt import VQT

pytestmark = pytest.mark.usefixtures("one_thread")

# Measured on these tiny ViTs (3 families): features max |diff| bf16 0.005-0.007, fp16 0.0005-0.001 (entries of
# the L2-normalised pieces reach 0.44); query gradients max |diff| / max |grad| bf16 0.011-0.022, fp16 0.0015-0.0024.
# Bounds: about 2x the worst seen. (bf16 keeps 8 mantissa bits, fp16 11: a 2^-8 vs 2^-11 relative rounding.)
FEATURE_TOLERANCE = {torch.bfloat16: 1.5e-2, torch.float16: 2e-3}
GRADIENT_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 5e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["plain_cls", "dinov2_ls_reg", "qknorm_scalenorm_gate"])
def test_vqt_on_a_half_precision_backbone(family: str, dtype: torch.dtype) -> None:
    backbone = tiny_vit(family)
    reference = VQT(backbone, num_classes=5, num_queries=2, query_dropout=0.0)
    model = VQT(copy.deepcopy(backbone).to(dtype), num_classes=5, num_queries=2, query_dropout=0.0)
    model.load_state_dict(reference.state_dict())  # same queries and head (cast into the fp32 parameters)
    images = torch.randn(4, 3, 32, 32)

    features, expected = model.features(images), reference.features(images)
    assert features.dtype == torch.float32
    assert (features - expected).abs().max() <= FEATURE_TOLERANCE[dtype]

    labels = torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(images), labels).backward()
    F.cross_entropy(reference(images), labels).backward()
    for ours, theirs in zip(model.queries, reference.queries, strict=True):
        assert ours.dtype == torch.float32 and ours.grad is not None and ours.grad.dtype == torch.float32
        scale = theirs.grad.abs().max()
        assert (ours.grad - theirs.grad).abs().max() <= GRADIENT_TOLERANCE[dtype] * scale
    assert model.head.weight.grad.dtype == torch.float32

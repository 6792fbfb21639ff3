"""benchmarks/train_speed.py's analytic FLOP count of the query path against torch's own FLOP counter."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tests.tiny_models import tiny_vit
from vqt.backbone import query_path
from vqt.backbone.tap import TapOutput
from vqt.methods.vqt import VQT
from vqt.training import VQTGrid, grid_configs
from vqt.training.trainers import vqt_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_speed():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_speed.py"
    spec = importlib.util.spec_from_file_location("train_speed", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_speed", module)
    spec.loader.exec_module(module)
    return module


# plain_cls computes in the absorbed form, qknorm_scalenorm_gate in the recompute form (and has a gate).
@pytest.mark.parametrize("family", ["plain_cls", "qknorm_scalenorm_gate"])
@pytest.mark.parametrize("num_queries, configs", [(1, 1), (3, 1), (2, 4)])
def test_counted_flops_equal_torchs_flop_counter(train_speed, family: str, num_queries: int, configs: int,
                                                 monkeypatch) -> None:
    # torch's FlopCounterMode counts nothing for the fused CPU attention kernel the recompute form trains through
    # (`_scaled_dot_product_flash_attention_for_cpu`); the same maths through the explicit softmax is counted.
    fused = query_path._attention
    monkeypatch.setattr(query_path, "_attention", lambda q, k, v, need_weights: fused(q, k, v, True))
    backbone = tiny_vit(family)
    model = VQT(backbone, num_classes=5, num_queries=num_queries, query_dropout=0.1).train()
    batch, tokens = 4, 17
    generator = torch.Generator().manual_seed(0)
    tapped = TapOutput([torch.randn(batch, tokens, 48, generator=generator) for _ in range(3)], torch.randn(batch, 48))
    labels = torch.randint(0, 5, (batch,), generator=generator)
    with FlopCounterMode(display=False) as counter:  # one training step: forward and backward
        if configs == 1:
            vqt_loss(model, tapped, labels).backward()
        else:
            grid = VQTGrid(model, grid_configs([0.1] * configs, [0.0])).train()
            F.cross_entropy(grid.logits(tapped).reshape(-1, 5), labels.repeat(configs)).backward()
    counted = train_speed.query_path_flops(backbone, num_queries, configs, tokens, 5) * batch
    assert counted == counter.get_total_flops()

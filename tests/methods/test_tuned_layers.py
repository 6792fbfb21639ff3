"""`tuned_layers`: adapting methods shrunk to their last blocks, the way the memory-limited comparison shrinks them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tiny_models import tiny_vit
from vqt.bench.memory import SavedActivations
from vqt.methods.registry import create_method, get_method
from vqt.methods.spec import AdaptConfig
from vqt.methods.vpt import VPT

pytestmark = pytest.mark.usefixtures("one_thread")

SHRINKABLE = ("vpt-deep", "adaptformer", "lora", "finetune", "bitfit")
IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1, 2, 3])


def built(method: str, tuned_layers: int | None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_method(method, tiny_vit("dinov2_ls_reg"), 5, tuned_layers=tuned_layers)


def trainable_blocks(model: nn.Module) -> set[int]:
    """Indices of the backbone blocks holding a trainable parameter."""
    return {int(name.split("blocks.")[1].split(".")[0]) for name, p in model.named_parameters()
            if p.requires_grad and "blocks." in name}


def test_the_registry_marks_exactly_the_shrinkable_methods() -> None:
    from vqt.methods.registry import METHODS

    assert {name for name, spec in METHODS.items() if spec.config is AdaptConfig} == set(SHRINKABLE)
    with pytest.raises(ValueError, match="no tuned layers"):
        get_method("vqt").kwargs(tuned_layers=2)
    assert get_method("lora").kwargs() == {}  # unset: the kwargs (and so saved adapters) of before
    assert get_method("lora").kwargs(tuned_layers=2) == {"tuned_layers": 2}


@pytest.mark.parametrize("method", SHRINKABLE)
def test_all_layers_is_the_unshrunk_method(method: str) -> None:
    depth = len(tiny_vit("dinov2_ls_reg").blocks)
    full, same = built(method, None).eval(), built(method, depth).eval()
    assert [(n, p.shape, p.requires_grad) for n, p in full.named_parameters()] == \
        [(n, p.shape, p.requires_grad) for n, p in same.named_parameters()]
    with torch.no_grad():
        torch.testing.assert_close(same(IMAGES), full(IMAGES), rtol=0, atol=0)


@pytest.mark.parametrize("method", SHRINKABLE)
def test_only_the_last_blocks_train_and_backward_keeps_less(method: str) -> None:
    """Fewer tuned blocks: no trainable parameter before them, and autograd saves fewer activations."""
    depth = len(tiny_vit("dinov2_ls_reg").blocks)
    saved = {}
    for tuned in (depth, 1):
        model = built(method, tuned).train()
        blocks = trainable_blocks(model)
        assert blocks == set(range(depth - tuned, depth)) or (method == "vpt-deep" and not blocks)
        if method == "vpt-deep":
            assert model.prompts.shape[0] == tuned
        with SavedActivations([model]) as counter:
            loss = nn.functional.cross_entropy(model(IMAGES), LABELS)
        loss.backward()
        saved[tuned] = counter.bytes
        trained = [p for p in model.parameters() if p.requires_grad]
        assert all(p.grad is not None for p in trained)  # every trainable parameter is reached
    assert saved[1] < 0.75 * saved[depth], saved


def test_shrunk_vpt_deep_is_prompts_before_the_last_blocks_only() -> None:
    """The plain computation: the first blocks on the plain tokens, then VPT-deep's insert/replace rule."""
    model = built("vpt-deep", 2).eval()
    backbone = model.backbone
    with torch.no_grad():
        x = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(IMAGES)))
        prefix, count = backbone.num_prefix_tokens, model.prompts.shape[1]
        depth = len(backbone.blocks)
        for index, block in enumerate(backbone.blocks):
            if index == depth - 2:
                x = torch.cat([x[:, :prefix], model.prompts[0].expand(len(x), -1, -1), x[:, prefix:]], dim=1)
            elif index == depth - 1:
                x = torch.cat([x[:, :prefix], model.prompts[1].expand(len(x), -1, -1), x[:, prefix + count :]], 1)
            x = block(x)
        x = torch.cat([x[:, :prefix], x[:, prefix + count :]], dim=1)
        expected = model.head(backbone.forward_head(backbone.norm(x), pre_logits=True))
        torch.testing.assert_close(model(IMAGES), expected)


def test_impossible_tuned_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="from 1 to the backbone's depth"):
        built("adaptformer", 99)
    with pytest.raises(ValueError, match="from 1 to the backbone's depth"):
        built("lora", 0)
    with pytest.raises(ValueError, match="VPT-deep"):
        VPT(tiny_vit(), 5, mode="shallow", tuned_layers=1)

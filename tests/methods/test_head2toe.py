"""Head2Toe's pooling as the paper's code does it (flatten and concatenate pooled tokens to a target width)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _keras_average_pooling_1d(tokens: np.ndarray, pool: int) -> np.ndarray:
    """tf.keras.layers.AveragePooling1D(pool_size=pool, strides=pool) (padding 'valid') then Flatten, in numpy."""
    batch, length, width = tokens.shape
    windows = (length - pool) // pool + 1
    out = np.stack([tokens[:, w * pool : w * pool + pool].mean(axis=1) for w in range(windows)], axis=1)
    return out.reshape(batch, windows * width)


@pytest.mark.parametrize("num_tokens,width,target", [(197, 768, 8192), (197, 3072, 8192), (197, 768, 4096),
                                                     (197, 768, 512), (197, 768, 1024), (17, 48, 200)])
def test_pool_to_target_is_head2toes_flatten_and_concat(num_tokens, width, target):
    from vqt.methods import head2toe

    tokens = torch.randn(2, num_tokens, width, dtype=torch.float64)
    got = head2toe.pool_to_target(tokens, target)
    # google-research/head2toe models/finetune.py, flatten_and_concat, 3-D outputs, cls_token_pool='normal'
    if width >= target:
        expected = tokens.numpy().mean(axis=1)
    else:
        pool = int(num_tokens / (target / width))
        expected = _keras_average_pooling_1d(tokens.numpy(), pool)
    torch.testing.assert_close(got, torch.from_numpy(expected))
    assert got.shape[1] == head2toe.target_feature_width(num_tokens, width, target)


def test_head2toe_paper_pooling_feature_dims_on_vit_b16(one_thread):
    import timm

    from vqt.methods.head2toe import PAPER_SOURCES, Head2Toe

    torch.manual_seed(0)
    backbone = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    image = torch.randn(1, 3, 224, 224)
    # per block at T = 8192: pre_attn, attn, mlp_2 pool 18 of the 197 tokens -> 10 x 768 = 7,680 each;
    # mlp_1 (3,072 wide) pools 73 -> 2 x 3,072 = 6,144. Plus the pre-logits (768).
    paper = Head2Toe(backbone, num_classes=10, sources=PAPER_SOURCES, target_sizes=(8192,))
    assert paper.feature_dim == 768 + 12 * (3 * 7680 + 6144) == 350_976
    assert paper.extract(image).shape == (1, 350_976)
    # T = 512: every source is wider than T, so each is its token mean (768, 768, 3,072, 768)
    small = Head2Toe(backbone, num_classes=10, sources=PAPER_SOURCES, target_sizes=(512,))
    assert small.feature_dim == 768 + 12 * (3 * 768 + 3072) == 65_280
    assert small.extract(image).shape == (1, 65_280)
    # the CPU-sized default is unchanged
    default = Head2Toe(backbone, num_classes=10)
    assert default.feature_dim == 768 + 12 * 2 * 768 == 19_200
    assert default.extract(image).shape == (1, 19_200)
    with pytest.raises(ValueError, match="not both"):
        Head2Toe(backbone, num_classes=10, pool_sizes=(2,), target_sizes=(8192,))

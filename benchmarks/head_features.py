"""Evaluating the seeds of a head method from a feature store: one computation of the frozen features vs one each.

The sweep's seed phase evaluates 5 seeds (and, with --compress, 5 compressed heads) on the test store. Head2Toe's
"attn" source reruns every block's attention on the stored tokens, about a backbone pass per image, and its
features never depend on the head; `vqt.protocol.accuracy.shared_store_features` computes them once for all
models with the same `feature_key`. This times both ways side by side on one store (same models, same accuracies
checked equal):

- per model: `store_features` for each model, as the sweep did before (`evaluate_store_models` per model);
- shared:    `evaluate_store_models(models, store)`, one pass over the store for all of them.

    python benchmarks/head_features.py                      # ViT-S/16 random weights at 224 px, 128 images, 10 models
    python benchmarks/head_features.py --images 32 --models 4 --img-size 64      # seconds

The last line reads `shared-feature speed-up (per model / shared): <number>`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from vqt.backbone.sources import create_backbone
from vqt.features import extract_features
from vqt.methods.registry import create_method
from vqt.protocol import accuracy


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_small_patch16_224@random")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--models", type=int, default=10, help="seeds (and compressed heads) evaluated together")
    parser.add_argument("--method", default="head2toe", choices=("head2toe", "linear"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, img_size=args.img_size).eval()
    images = torch.randn(args.images, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 10, (args.images,))
    with tempfile.TemporaryDirectory() as tmp:
        store = extract_features(backbone, TensorDataset(images, labels), Path(tmp) / "store",
                                 backbone_spec=args.backbone, transform={"name": "random"},
                                 dataset_meta={"list_file": "random"}, dtype="float16", batch_size=32, progress=False)
        models = []
        for seed in range(args.models):
            torch.manual_seed(seed)
            models.append(create_method(args.method, backbone, 10).eval())
        accuracy.store_features(models[0], store)  # warm-up (allocations, first-call costs), not timed
        start = time.perf_counter()
        each = []
        for model in models:
            features, store_labels = accuracy.store_features(model, store)
            each.append(float((model.head(features).argmax(-1) == store_labels).double().mean()))
        per_model = time.perf_counter() - start
        start = time.perf_counter()
        shared = accuracy.evaluate_store_models(models, store)
        shared_s = time.perf_counter() - start
    if shared != each:
        raise SystemExit(f"accuracies differ: {shared} vs {each}")
    print(f"{args.method} on {args.backbone} at {args.img_size} px, {args.images} stored images, {args.models} models, "
          f"{torch.get_num_threads()} threads")
    print(f"per model: {per_model:.2f} s; shared: {shared_s:.2f} s; accuracies equal")
    ratio = per_model / shared_s
    print(f"shared-feature speed-up (per model / shared): {ratio:.1f}")
    return ratio


if __name__ == "__main__":
    main()

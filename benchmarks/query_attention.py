"""The query path's attention: `scaled_dot_product_attention` vs the explicit softmax, side by side in one run.

For each form (absorbed, recompute) and number of queries, one VQT training step from tapped tokens (random
weights, frozen backbone): the bytes autograd saves, the step time, and the largest difference of the features
and gradients between the two attention paths. The explicit path is the one the library takes when the attention
weights are asked for (`return_attention=True`, viz); SDPA is what training runs in the recompute form.

    python benchmarks/query_attention.py                              # ViT-S/16, batch 8, Q in 1 10 100
    python benchmarks/query_attention.py --model vit_base_patch16_224 --batch 32 --out results.md
"""

from __future__ import annotations

import argparse
import platform
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import torch

from vqt.backbone import query_path
from vqt.backbone.sources import create_backbone
from vqt.bench.memory import SavedActivations
from vqt.methods.vqt import VQT

MiB = 2**20


@contextmanager
def explicit_attention():
    """Every attention of the query path through the explicit softmax, as with the weights asked for."""
    fused = query_path._attention
    query_path._attention = lambda q, k, v, need_weights: fused(q, k, v, True)
    try:
        yield
    finally:
        query_path._attention = fused


def step(model: VQT, tapped) -> tuple[torch.Tensor, list[torch.Tensor], float, float]:
    """Features, gradients, saved MiB, seconds of one forward + backward from the tapped tokens."""
    model.zero_grad()
    start = time.perf_counter()
    with SavedActivations([model]) as saved:
        features = model.features_from(tapped)
        loss = model.head(features).square().mean()
    loss.backward()
    seconds = time.perf_counter() - start
    return features.detach(), [p.grad.clone() for p in model.trainable_parameters()], saved.bytes / MiB, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    backbone = create_backbone(f"{args.model}@random")
    images = torch.randn(args.batch, 3, *backbone.patch_embed.img_size)
    rows = ["| form | Q | saved MiB explicit | saved MiB SDPA | SDPA ÷ explicit | s explicit | s SDPA "
            "| max feature diff | max grad rel. diff |", "|---|---|---|---|---|---|---|---|---|"]
    for form in ("absorbed", "recompute"):
        for num_queries in args.queries:
            model = VQT(backbone, num_classes=10, num_queries=num_queries, form=form).eval()
            with torch.no_grad():
                tapped = model.tap(images)
            step(model, tapped)  # warm-up
            with explicit_attention():
                plain = step(model, tapped)
            fused = step(model, tapped)
            feature_diff = float((fused[0] - plain[0]).abs().max())
            grad_diff = max(float((a - b).norm() / b.norm()) for a, b in zip(fused[1], plain[1], strict=True))
            rows.append(f"| {form} | {num_queries} | {plain[2]:.2f} | {fused[2]:.2f} | {fused[2] / plain[2]:.3f} "
                        f"| {plain[3]:.3f} | {fused[3]:.3f} | {feature_diff:.1e} | {grad_diff:.1e} |")
    heading = (f"Query-path attention, {args.model}@random, batch {args.batch}, fp32, "
               f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {date.today()}")
    table = "\n".join([heading, "", *rows])
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CUDA-only checks: the device paths give what the host paths give. Skipped without CUDA (tests/conftest.py).

Run on a GPU with `python -m pytest -m cuda` (or `python benchmarks/run_all.py --device cuda`). fp32 comparisons
turn TF32 off: with it, CUDA matmuls and convolutions round to 10-bit mantissas and differ from the CPU by ~1e-3.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tests.tiny_models import tiny_vit
from vqt.features import extract_features
from vqt.methods.vqt import VQT
from vqt.methods.vqt_concat import ConcatVQT
from vqt.training import GridConfig, Recipe, train_grid

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def images_and_labels(count: int = 24, classes: int = 5, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, 3, 32, 32, generator=generator),
                         torch.randint(0, classes, (count,), generator=generator))


def values(array: np.ndarray) -> torch.Tensor:
    """A store's memory-mapped array as a tensor (a copy: the map is read-only)."""
    return torch.from_numpy(np.array(array))


def extract(tmp_path, name: str, device: torch.device, **kwargs):
    backbone = tiny_vit().to(device)
    return extract_features(backbone, images_and_labels(), tmp_path / name, backbone_spec="tiny@random",
                            transform={"synthetic": "randn"}, dataset_meta={"split": name}, dtype="float32",
                            batch_size=8, device=device, progress=False, **kwargs)


def test_extraction_on_cuda_equals_cpu(tmp_path):
    cpu, gpu = extract(tmp_path, "cpu", torch.device("cpu")), extract(tmp_path, "gpu", CUDA)
    torch.testing.assert_close(values(gpu.tokens), values(cpu.tokens), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(values(gpu.pre_logits), values(cpu.pre_logits), atol=1e-4, rtol=1e-4)


def test_bf16_extraction_on_cuda_is_close_to_fp32(tmp_path):
    if "precision" not in inspect.signature(extract_features).parameters:
        pytest.skip("extract_features takes no precision= here")
    fp32 = extract(tmp_path, "fp32", CUDA, precision="fp32")
    bf16 = extract(tmp_path, "bf16", CUDA, precision="bf16")
    assert bf16.meta.get("precision") == "bf16"
    for ours, reference in ((bf16.tokens, fp32.tokens), (bf16.pre_logits, fp32.pre_logits)):
        ours, reference = values(ours).double(), values(reference).double()
        assert not torch.equal(ours, reference)  # bf16 really ran
        relative = (ours - reference).norm() / reference.norm()
        assert relative < 0.03, f"bf16 extraction differs from fp32 by {relative:.4f} (relative)"


def test_query_path_on_cuda_equals_cpu():
    torch.manual_seed(0)
    model = VQT(tiny_vit(), num_classes=5, num_queries=2, query_dropout=0.0)
    gpu = copy.deepcopy(model).to(CUDA)
    images = images_and_labels().tensors[0][:6]
    cpu_logits, gpu_logits = model(images), gpu(images.to(CUDA))
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, atol=1e-4, rtol=1e-4)
    cpu_logits.square().sum().backward()
    gpu_logits.square().sum().backward()
    for ours, reference in zip(gpu.queries, model.queries, strict=True):
        torch.testing.assert_close(ours.grad.cpu(), reference.grad, atol=1e-4, rtol=1e-3)


def test_official_style_on_cuda_equals_query_path():
    """The masked-concatenation model (SDPA with a boolean mask on CUDA kernels) gives the query path's logits."""
    torch.manual_seed(0)
    ours = VQT(tiny_vit(), num_classes=5, num_queries=3, query_dropout=0.0).to(CUDA).eval()
    official = ConcatVQT(tiny_vit(), num_classes=5, num_queries=3, query_dropout=0.0).to(CUDA).eval()
    official.load_state_dict(ours.state_dict())
    images = images_and_labels().tensors[0][:6].to(CUDA)
    with torch.no_grad():
        torch.testing.assert_close(official(images), ours(images), atol=1e-4, rtol=1e-4)


def train_on(store, device: torch.device, **kwargs) -> list[torch.Tensor]:
    torch.manual_seed(0)
    template = VQT(tiny_vit().to(device), num_classes=5, num_queries=2).to(device)
    configs = [GridConfig(0.5, 1e-4, 0), GridConfig(0.1, 0.0, 1)]
    result = train_grid(template, store, configs, Recipe(epochs=3, warmup_epochs=1, batch_size=8), **kwargs)
    return [p.detach().cpu() for p in result.grid.parameters()]


def test_grid_training_on_cuda_equals_cpu(tmp_path):
    store = extract(tmp_path, "store", torch.device("cpu"))
    for ours, reference in zip(train_on(store, CUDA), train_on(store, torch.device("cpu")), strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-3)


def test_store_fed_from_the_device_equals_the_host_path(tmp_path):
    """A store resident on the GPU (gathered there) trains exactly like one streamed from the host."""
    if "store_device" not in inspect.signature(train_grid).parameters:
        pytest.skip("train_grid takes no store_device= here (vqt.training.feeding not wired in)")
    store = extract(tmp_path, "store", torch.device("cpu"))
    resident = train_on(store, CUDA, store_device="cuda")
    streamed = train_on(store, CUDA, store_device="cpu")
    for ours, reference in zip(resident, streamed, strict=True):
        assert torch.equal(ours, reference)


def test_cuda_bf16_step_saves_no_weight_casts_and_about_half_the_fp32_bytes() -> None:
    """The GPU default path (bf16 autocast): the query path reads its once-made bf16 block copies, so a step saves
    no cast of a frozen weight and at most 0.6x the fp32 step's bytes, weights included."""
    from vqt.bench.memory import SavedActivations

    model = VQT(tiny_vit("dinov2_ls_reg").to(CUDA), 4, num_queries=2).train()
    images, labels = torch.randn(8, 3, 32, 32, device=CUDA), torch.zeros(8, dtype=torch.long, device=CUDA)

    def saved_bytes(precision: str) -> tuple[int, int]:
        with SavedActivations([model]) as saved:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                features = model.features(images)
            loss = torch.nn.functional.cross_entropy(model.head(features), labels)
        loss.backward()
        return saved.bytes, saved.cast_bytes

    fp32, _ = saved_bytes("fp32")
    saved_bytes("bf16")  # makes the copies
    bf16, casts = saved_bytes("bf16")
    assert bf16 <= 0.6 * fp32 and casts <= 2 * sum(q.numel() for q in model.queries)

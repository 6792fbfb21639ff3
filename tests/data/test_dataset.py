"""The lazy dataset: decodes on access, in workers too; skip_bad drops and counts undecodable images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vqt.data.dataset import ImageListDataset, make_loader, skip_none_collate
from vqt.data.lists import read_list
from vqt.errors import DataError


@pytest.fixture
def images(tmp_path: Path):
    for index in range(6):
        Image.new("RGB", (6, 4), (index * 40, 0, 0)).save(tmp_path / f"{index}.png")
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    lines = "".join(f"{index}.png {index % 2}\n" for index in range(6))
    (tmp_path / "list.txt").write_text(lines)
    return read_list(tmp_path / "list.txt", num_classes=2)


def test_getitem_decodes_lazily(images) -> None:
    dataset = ImageListDataset(images)
    image, label = dataset[1]
    assert image.shape == (3, 4, 6) and label == 1
    assert torch.allclose(image[0], torch.full((4, 6), 40 / 255))
    assert dataset.num_classes == 2


def test_corrupt_image_names_list_line(images) -> None:
    with pytest.raises(DataError, match=r"list\.txt:4: .*3\.png: not a readable image"):
        ImageListDataset(images)[3]


def test_skip_bad_counts_across_workers(images) -> None:
    dataset = ImageListDataset(images, skip_bad=True, return_index=True)
    loader = make_loader(dataset, batch_size=2, num_workers=2)
    seen = []
    for batch in loader:
        if batch is None:
            continue
        _, labels, indices = batch
        seen.extend(indices.tolist())
    assert sorted(seen) == [0, 1, 2, 4, 5]
    assert dataset.bad_indices() == [3]  # recorded by a worker process, read in this one
    summary = dataset.skip_summary()
    assert summary["skipped"] == 1 and "list.txt:4" in summary["reasons"][0]


def test_collate_of_all_bad_batch() -> None:
    assert skip_none_collate([None, None]) is None
    images, labels = skip_none_collate([None, (torch.zeros(2), 1)])
    assert images.shape == (1, 2) and labels.tolist() == [1]

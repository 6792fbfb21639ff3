"""A lazy torch Dataset over an `ImageList`: images are decoded one at a time, in the DataLoader workers.

Nothing decoded is kept (a VTAB test split can be 70k images). With ``skip_bad=True`` an undecodable image
yields None instead of raising; `skip_none_collate` (used by `make_loader`) drops those, and the bad indices are
recorded in a shared-memory flag tensor, so the count is correct in the main process even when the decoding
happened in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import functional as tvf

from vqt.data.images import open_rgb
from vqt.data.lists import Entry, ImageList
from vqt.errors import DataError

Transform = Callable[[Image.Image], Any]


class ImageListDataset(Dataset):
    """``dataset[i] -> (image, label)`` (or ``(image, label, i)`` with `return_index`), decoded on access.

    `transform` maps the RGB PIL image to what the model reads; without one the image becomes a float
    tensor in [0, 1] (C, H, W).
    """

    def __init__(
        self,
        images: ImageList,
        transform: Transform | None = None,
        skip_bad: bool = False,
        return_index: bool = False,
    ):
        self.images = images
        self.entries: Sequence[Entry] = images.entries
        self.transform = transform if transform is not None else tvf.to_tensor
        self.skip_bad = skip_bad
        self.return_index = return_index
        # One byte per entry in shared memory: workers mark undecodable images, the main process reads them.
        self._bad = torch.zeros(len(self.entries), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[Any, ...] | None:
        entry = self.entries[index]
        try:
            image = open_rgb(entry.path, where=entry.where)
        except DataError:
            if not self.skip_bad:
                raise
            self._bad[index] = 1
            return None
        sample = self.transform(image)
        if self.return_index:
            return sample, entry.label, index
        return sample, entry.label

    @property
    def num_classes(self) -> int:
        """Number of classes of the underlying `ImageList`."""
        return self.images.num_classes

    def bad_indices(self) -> list[int]:
        """Indices of images found undecodable so far (and skipped), in any process."""
        return torch.nonzero(self._bad, as_tuple=False).flatten().tolist()

    def skipped(self) -> list[str]:
        """Every skipped item with its reason: bad list lines (read time) then bad images (decode time)."""
        decode = [
            f"{self.entries[index].where}: {self.entries[index].relpath}: corrupt or unreadable image"
            for index in self.bad_indices()
        ]
        return [*self.images.skipped, *decode]

    def skip_summary(self) -> dict[str, object]:
        """JSON-able count and reasons for the run summary."""
        reasons = self.skipped()
        return {"skipped": len(reasons), "reasons": reasons}


def skip_none_collate(batch: list[Any]) -> Any:
    """`default_collate` after dropping the None items of skipped images; None when the whole batch was bad."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return default_collate(kept)


def make_loader(
    dataset: ImageListDataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader that decodes in `num_workers` processes and drops skipped images.

    With ``dataset.skip_bad`` a batch may be smaller than `batch_size`, or None if every image in it was bad:
    callers skip None batches.
    """
    kwargs.setdefault("persistent_workers", False)
    if num_workers > 0:
        kwargs.setdefault("prefetch_factor", 2)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=skip_none_collate,
        **kwargs,
    )

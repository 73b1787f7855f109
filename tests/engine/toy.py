"""A toy one-shot dataset for engine tests (no files, no data package)."""
import torch

from detector.structures import ImageBatch


class ToyDataset(torch.utils.data.Dataset):
    """Deterministic items: a random 64x64 image with one box, and a 32x32 exemplar."""

    def __init__(self, n=8, log_path=None):
        self.n, self.epoch, self.log_path = n, 0, log_path

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)  # fixed pixels per index (cacheable), epoch-dependent boxes
        box = torch.tensor([[0.3 + 0.04 * ((i + self.epoch) % 10), 0.5, 0.2, 0.3]])
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(f"{self.epoch} {i}\n")
        return {"query_image": torch.rand(3, 64, 64, generator=g), "support_image": torch.rand(3, 32, 32, generator=g),
                "target": {"boxes": box, "labels": torch.zeros(1, dtype=torch.long), "image_id": i, "category_id": 1,
                           "orig_size": torch.tensor([64, 64]), "size": torch.tensor([64, 64])}}


def collate(items):
    return (ImageBatch.from_tensors([it["query_image"] for it in items]),
            ImageBatch.from_tensors([it["support_image"] for it in items]), [it["target"] for it in items])

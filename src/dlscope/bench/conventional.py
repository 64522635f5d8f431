"""The conventional PyTorch loop the engine is compared with: a Dataset that builds one
normalized tensor per item, a DataLoader, torch.optim.Adam, and loss.item() every step."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class ConventionalMnist(torch.utils.data.Dataset):
    """One normalized image tensor [1, 28, 28] per item from the uint8 array, as
    torchvision's ToTensor + Normalize((0.1307,), (0.3081,)) make it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0)
        return (x - 0.1307) / 0.3081, int(self.labels[i])


def conventional_epoch(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                       seed: int, batch_size: int = 64, lr: float = 1e-3) -> float:
    """One epoch the conventional way; returns the mean training loss."""
    loader = torch.utils.data.DataLoader(ConventionalMnist(images, labels),
                                         batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    total, count = 0.0, 0
    for xb, yb in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        total += loss.item() * len(yb)
        count += len(yb)
    return total / count

"""Torch families: RouterBench's MLP and RouteLLM's matrix factorisation (`mf`).

Both train on every observed (prompt, model) cell at once with a masked binary cross-entropy (soft
labels allowed), full-batch Adam on CPU; a few seconds for thousands of prompts.

MF (Ong et al. 2024): the prompt embedding is projected to a latent space, multiplied element-wise with
a learned model vector, and a shared linear head scores the product: P(success) = sigmoid(w . (v_m *
W e) + b_m). The MLP has one hidden layer over the standardised features with one output per model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from routers.features.featurizer import Features
from routers.models.standardizer import Standardizer


def _masked_fit(net: nn.Module, x: np.ndarray, y: np.ndarray, weight: np.ndarray, epochs: int, lr: float,
                weight_decay: float, seed: int) -> None:
    torch.manual_seed(seed)
    xt = torch.from_numpy(x.astype(np.float32))
    observed = ~np.isnan(y)
    yt = torch.from_numpy(np.nan_to_num(y).astype(np.float32))
    wt = torch.from_numpy(np.where(observed, weight, 0.0).astype(np.float32))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    net.train()
    for _ in range(epochs):
        loss = (loss_fn(net(xt), yt) * wt).sum() / wt.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()


def _predict(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(net(torch.from_numpy(x.astype(np.float32)))).numpy().astype(np.float64)


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, outputs: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MLPQuality:
    def __init__(self, hidden: int = 128, epochs: int = 300, lr: float = 3e-3, weight_decay: float = 1e-2,
                 dropout: float = 0.3, seed: int = 0) -> None:
        self.hidden, self.epochs, self.lr, self.wd, self.dropout, self.seed = hidden, epochs, lr, weight_decay, dropout, seed

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        self.scaler = Standardizer().fit(x.dense)
        self.net = _MLP(x.dense.shape[1], self.hidden, y.shape[1], self.dropout)
        _masked_fit(self.net, self.scaler(x.dense), y, weight, self.epochs, self.lr, self.wd, self.seed)

    def predict(self, x: Features) -> np.ndarray:
        return _predict(self.net, self.scaler(x.dense))


class _MF(nn.Module):
    def __init__(self, dim: int, latent: int, models: int) -> None:
        super().__init__()
        self.text_proj = nn.Linear(dim, latent, bias=False)
        self.model_vectors = nn.Parameter(torch.randn(models, latent) * 0.1)
        self.head = nn.Linear(latent, 1, bias=False)
        self.model_bias = nn.Parameter(torch.zeros(models))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompt = nn.functional.normalize(self.text_proj(x), dim=-1)  # (n, latent)
        models = nn.functional.normalize(self.model_vectors, dim=-1)  # (m, latent)
        product = prompt[:, None, :] * models[None, :, :]  # (n, m, latent)
        return self.head(product).squeeze(-1) * 10.0 + self.model_bias


class MFQuality:
    def __init__(self, latent: int = 128, epochs: int = 300, lr: float = 3e-3, weight_decay: float = 1e-3,
                 seed: int = 0) -> None:
        self.latent, self.epochs, self.lr, self.wd, self.seed = latent, epochs, lr, weight_decay, seed

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        self.net = _MF(x.dense.shape[1], self.latent, y.shape[1])
        _masked_fit(self.net, x.dense, y, weight, self.epochs, self.lr, self.wd, self.seed)

    def predict(self, x: Features) -> np.ndarray:
        return _predict(self.net, x.dense)

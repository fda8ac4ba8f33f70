"""The world's two cell classifiers (both 11-way: digits 0–9 + blank), trained deterministically on
disjoint splits of the digits and shipped in flowdppo/assets/world_judges.safetensors.

  tifa classifier  multinomial logistic regression on the 64 raw pixels of a cell (sklearn, lbfgs),
                   trained on the "cls" split.  It defines the in-domain reward (the RL target).
  judge            a small CNN (3 convs, global average pooling, 32-d features), trained with ±1-pixel
                   shift augmentation on the "judge" split.  Different architecture, features and data
                   from the reward classifier: it stands in for CLIP when checking prompt–image
                   agreement, and its 32-d features stand in for Inception features (realism, FID).

Rebuild with `python -m flowdppo.world.judges` (a few seconds; bit-identical on the same torch).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from .data import BLANK_CLASS, CELL, NUM_CLASSES, blank_cells, digit_splits

ASSET = Path(__file__).resolve().parent.parent / "assets" / "world_judges.safetensors"
FEATURE_DIM = 32


class JudgeCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, FEATURE_DIM, 3, padding=1)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, cells: Tensor) -> Tensor:
        """cells [N, 8, 8] in [0, 1] → features [N, 32]."""
        h = F.relu(self.c1(cells.unsqueeze(1)))
        h = F.max_pool2d(F.relu(self.c2(h)), 2)          # [N, 32, 4, 4]
        return F.relu(self.c3(h)).mean(dim=(2, 3))

    def forward(self, cells: Tensor) -> Tensor:
        return self.head(self.features(cells))


class LogRegClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(CELL * CELL, NUM_CLASSES)

    def forward(self, cells: Tensor) -> Tensor:
        return self.linear(cells.reshape(cells.shape[0], -1))


def _with_blanks(split: str, n_blank: int, seed: int) -> tuple[Tensor, Tensor]:
    images, labels = digit_splits()[split]
    g = torch.Generator().manual_seed(seed)
    blanks = blank_cells(n_blank, g)
    return torch.cat([images, blanks]), torch.cat([labels, torch.full((n_blank,), BLANK_CLASS)])


def heldout_set(for_model: str) -> tuple[Tensor, Tensor]:
    """Digits neither model of that name saw (+ fresh blanks): tifa → gen ∪ judge, judge → gen ∪ cls."""
    other = "judge" if for_model == "tifa" else "cls"
    a = _with_blanks("gen", 100, seed=11)
    b = _with_blanks(other, 40, seed=12)
    return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])


def train_tifa_classifier() -> LogRegClassifier:
    from sklearn.linear_model import LogisticRegression

    x, y = _with_blanks("cls", 60, seed=1)
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(x.reshape(len(x), -1).double().numpy(), y.numpy())
    model = LogRegClassifier()
    with torch.no_grad():
        model.linear.weight.copy_(torch.as_tensor(lr.coef_, dtype=torch.float32))
        model.linear.bias.copy_(torch.as_tensor(lr.intercept_, dtype=torch.float32))
    return model.eval()


def train_judge(steps: int = 1500, seed: int = 0) -> JudgeCNN:
    torch.manual_seed(seed)
    x, y = _with_blanks("judge", 60, seed=2)
    model = JudgeCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    padded = F.pad(x, (1, 1, 1, 1))                       # [N, 10, 10] for ±1-pixel shifts
    for _ in range(steps):
        idx = torch.randint(len(x), (128,), generator=g)
        dy, dx = torch.randint(3, (2,), generator=g).tolist()
        batch = padded[idx, dy:dy + CELL, dx:dx + CELL]
        loss = F.cross_entropy(model(batch), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def build_assets(path: Path = ASSET) -> dict[str, float]:
    """Train both classifiers (deterministic) and save them; returns their held-out accuracies."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    tifa, judge = train_tifa_classifier(), train_judge()
    state = {f"tifa.{k}": v.contiguous() for k, v in tifa.state_dict().items()}
    state.update({f"judge.{k}": v.contiguous() for k, v in judge.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return {"tifa_heldout_acc": accuracy(tifa, *heldout_set("tifa")),
            "judge_heldout_acc": accuracy(judge, *heldout_set("judge"))}


@functools.lru_cache(maxsize=1)
def load_judges() -> tuple[LogRegClassifier, JudgeCNN]:
    """The shipped (tifa classifier, judge), eval mode, frozen."""
    from safetensors.torch import load_file

    if not ASSET.exists():
        raise FileNotFoundError(f"{ASSET} is missing; rebuild it with `python -m flowdppo.world.judges`")
    state = load_file(str(ASSET))
    tifa, judge = LogRegClassifier(), JudgeCNN()
    tifa.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("tifa.")})
    judge.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("judge.")})
    for m in (tifa, judge):
        m.eval().requires_grad_(False)
    return tifa, judge


if __name__ == "__main__":
    print(build_assets())

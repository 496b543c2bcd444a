"""The built-in image task: procedural 16x16 shapes, a project-trained UNet teacher and classifier.

* data: :mod:`.shapes_data` (8 classes, colours independent of class), values in [-1, 1];
* teacher: :class:`~.unet.TinyUNet`, v-prediction on the VP-cosine schedule, unconditional, trained by
  :func:`train_teacher` (``python/train_image_teacher.py``);
* classifier: :class:`~.classifier.ShapeClassifier` trained by :func:`train_classifier`
  (``python/train_classifier.py``); its pooled features define the Fréchet distance (our FID analogue)
  against held-out data, and its log-probability of a target class is the neural reward;
* rewards: ``grayscale``, ``laplacian`` (closed form, method.md §e K4a/b) and ``classifier`` (log p(target)).
"""
from __future__ import annotations

import copy
import time

import torch

from ..denoiser import Denoiser
from ..rewards import GrayscaleReward, LaplacianReward, Reward
from ..schedules import get_schedule
from . import shapes_data
from .assets import load_asset, save_asset
from .classifier import ClassLogProbReward, ShapeClassifier, frechet_distance
from .unet import TinyUNet

SCHEDULE = "vp_cosine"
PREDICTION = "v"
REWARDS = ("grayscale", "laplacian", "classifier")
DEFAULT_TARGET = 0  # "disc": the classifier reward asks for discs


def make_denoiser(net: TinyUNet) -> Denoiser:
    """Wrap a TinyUNet as the task's x-predictor (VP cosine, v-prediction, continuous t input)."""
    return Denoiser(net, SCHEDULE, prediction=PREDICTION, time_input="t")


# ---------------------------------------------------------------------------------------- training
def train_teacher(*, steps: int = 2500, batch: int = 64, lr: float = 2e-3, ch: int = 16, ema: float = 0.995,
                  seed: int = 0, log=None, progress: bool = False) -> tuple[TinyUNet, dict]:
    """Train the unconditional v-prediction teacher on fresh procedural batches; returns (EMA net, meta).

    Loss ``E_{x, t ~ U(0,1), eps} ||net(alpha_t x + sigma_t eps, t) - (alpha_t eps - sigma_t x)||^2``
    with Adam, cosine lr decay and an EMA of the weights (the returned network). Batch i is
    ``make_shapes(batch, seed=10_000_000 * (seed + 1) + i)``: deterministic, never the held-out seeds.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = TinyUNet(ch=ch)
    avg = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    sch = get_schedule(SCHEDULE)
    t0, loss_ema = time.perf_counter(), None
    it = range(steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="teacher", unit="step")
    for i in it:
        x, _ = shapes_data.make_shapes(batch, 10_000_000 * (seed + 1) + i)
        t = torch.rand(batch, generator=g, dtype=torch.float64).clamp(sch.t_min, sch.t_max)
        a, s = (v.float().view(-1, 1, 1, 1) for v in sch.alpha_sigma(t))
        eps = torch.randn(x.shape, generator=g)
        loss = ((net(a * x + s * eps, t.float()) - (a * eps - s * x)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pa, pn in zip(avg.parameters(), net.parameters()):
                pa.lerp_(pn, 1.0 - ema)
        loss_ema = float(loss) if loss_ema is None else 0.98 * loss_ema + 0.02 * float(loss)
        if log and (i + 1) % max(1, steps // 10) == 0:
            log(f"teacher step {i + 1}/{steps}: loss {loss_ema:.4f}")
    meta = dict(steps=steps, batch=batch, lr=lr, ema=ema, seed=seed, final_loss=loss_ema,
                train_seconds=round(time.perf_counter() - t0, 1), torch=str(torch.__version__))
    return avg.eval(), meta


def train_classifier(*, steps: int = 800, batch: int = 64, lr: float = 2e-3, noise: float = 0.1, seed: int = 0,
                     log=None, progress: bool = False) -> tuple[ShapeClassifier, dict]:
    """Train the 8-way shape classifier with Gaussian-noise augmentation (std U(0, ``noise``)), so it
    also behaves on slightly noisy generated images. Returns (net, meta with held-out accuracy)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = ShapeClassifier(num_classes=len(shapes_data.CLASSES))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    it = range(steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="classifier", unit="step")
    for i in it:
        x, y = shapes_data.make_shapes(batch, 20_000_000 * (seed + 1) + i)
        x = x + noise * torch.rand(batch, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (i + 1) % max(1, steps // 5) == 0:
            log(f"classifier step {i + 1}/{steps}: loss {float(loss):.4f}")
    net.eval()
    xh, yh = shapes_data.split("heldout", 2000)
    with torch.no_grad():
        acc = float((net(xh).argmax(1) == yh).float().mean())
    meta = dict(steps=steps, batch=batch, lr=lr, noise=noise, seed=seed, heldout_accuracy=acc,
                train_seconds=round(time.perf_counter() - t0, 1), torch=str(torch.__version__))
    return net, meta


# ---------------------------------------------------------------------------------------- the task
class ShapesTask:
    """Everything the demo needs for the image task.

    Attributes: ``teacher`` (frozen :class:`Denoiser`), ``classifier`` (frozen), ``sample_shape``
    ``(3, 16, 16)``, ``heldout`` ``(n_ref, 3, 16, 16)`` held-out images and their features ``ref_feats``.
    """

    name = "shapes"
    sample_shape = (3, 16, 16)
    rewards = REWARDS

    def __init__(self, n_ref: int = 2000, teacher_path=None, classifier_path=None):
        net, self.teacher_meta = load_asset("shapes_teacher.pt", "shapes_teacher", TinyUNet, teacher_path)
        self.teacher = make_denoiser(net).requires_grad_(False).eval()
        self.classifier, self.classifier_meta = load_asset("shapes_classifier.pt", "shapes_classifier",
                                                           ShapeClassifier, classifier_path)
        self.classifier.requires_grad_(False)
        self.heldout, self.heldout_labels = shapes_data.split("heldout", n_ref)
        self.ref_feats = self.features(self.heldout)

    def data(self, n: int, seed: int) -> torch.Tensor:
        """``n`` fresh training images (for off-policy MM phase 1), deterministic in ``seed``."""
        return shapes_data.make_shapes(n, 30_000_000 + seed)[0]

    @torch.no_grad()
    def features(self, x: torch.Tensor, chunk: int = 500) -> torch.Tensor:
        return torch.cat([self.classifier.features(x[i:i + chunk].clamp(-1, 1)) for i in range(0, len(x), chunk)])

    def reward(self, name: str, target: int = DEFAULT_TARGET) -> Reward:
        """A reward by name: ``'grayscale' | 'laplacian' | 'classifier'`` (log p(target class))."""
        if name == "grayscale":
            return GrayscaleReward()
        if name == "laplacian":
            return LaplacianReward()
        if name == "classifier":
            return ClassLogProbReward(self.classifier, target)
        raise ValueError(f"unknown reward {name!r} for task 'shapes'; valid: {list(REWARDS)}")

    @torch.no_grad()
    def evaluate(self, x0: torch.Tensor, reward: Reward) -> dict:
        """``{'fd', 'reward', 'class_hist'}`` for samples ``x0 (N, 3, 16, 16)``: Fréchet distance to the
        held-out features, mean reward, and the classifier's predicted-class frequencies."""
        x = x0.clamp(-1, 1)
        feats = self.features(x)
        pred = torch.cat([self.classifier(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
        hist = torch.bincount(pred, minlength=len(shapes_data.CLASSES)).float() / len(x)
        return {"fd": frechet_distance(feats, self.ref_feats), "reward": float(reward(x).mean()),
                "class_hist": [round(float(h), 4) for h in hist]}


def save_teacher(net: TinyUNet, meta: dict, path, command: str) -> str:
    return save_asset(net, "shapes_teacher", path, meta, command)


def save_classifier(net: ShapeClassifier, meta: dict, path, command: str) -> str:
    return save_asset(net, "shapes_classifier", path, meta, command)

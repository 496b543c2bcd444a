"""The built-in image task: procedural data, committed checkpoints (validated), FD, neural reward."""
import json
import shutil

import pytest
import torch

from rmmd_core import sample
from rmmd_core.tasks import assets
from rmmd_core.tasks.assets import AssetError, load_asset
from rmmd_core.tasks.classifier import ClassLogProbReward, ShapeClassifier, frechet_distance
from rmmd_core.tasks.shapes import ShapesTask
from rmmd_core.tasks.shapes_data import CLASSES, make_shapes, split
from rmmd_core.tasks.unet import TinyUNet


@pytest.fixture(scope="module")
def task():
    return ShapesTask(n_ref=1000)


def test_dataset_is_deterministic_and_well_formed():
    x, y = make_shapes(64, 7)
    x2, y2 = make_shapes(64, 7)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (64, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert not torch.equal(make_shapes(64, 8)[0], x)
    xs, _ = make_shapes(len(CLASSES), 0, labels=torch.arange(len(CLASSES)))
    # every class draws a different mask: no two class images are equal
    assert len({tuple(v.flatten().tolist()) for v in xs}) == len(CLASSES)
    with pytest.raises(ValueError, match="unknown split"):
        split("test", 4)


def test_classifier_checkpoint_classifies_heldout_data(task):
    x, y = split("heldout", 500)
    with torch.no_grad():
        acc = float((task.classifier(x).argmax(1) == y).float().mean())
    assert acc > 0.95, acc


def test_frechet_distance_matches_the_gaussian_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) < 1e-8
    shift = torch.tensor([1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    b = torch.randn(20000, 4, generator=g, dtype=torch.float64) * 2 + shift
    # N(0, I) vs N(shift, 4I): |shift|^2 + 4 * (1 + 4 - 2*2) = 5 + 4
    assert abs(frechet_distance(a, b) - 9.0) < 0.3


def test_teacher_samples_are_close_to_the_data(task):
    """Measured at commit time: teacher (16 steps, 300 samples) FD ~ far below noise and below a
    wrong-colour version of the data; bounds are loose multiples of that."""
    x = sample(task.teacher, (300, 3, 16, 16), num_steps=16, generator=torch.Generator().manual_seed(0)).x0
    fd_teacher = frechet_distance(task.features(x), task.ref_feats)
    fd_noise = frechet_distance(task.features(torch.randn(300, 3, 16, 16).clamp(-1, 1)), task.ref_feats)
    xd, _ = split("train", 300)
    fd_data = frechet_distance(task.features(xd), task.ref_feats)
    assert fd_teacher < 0.1 * fd_noise, (fd_teacher, fd_noise)
    assert fd_data < fd_teacher, (fd_data, fd_teacher)  # fresh real data is closer than any model


def test_classifier_reward_gradient_and_ascent(task):
    r = task.reward("classifier", target=0)
    x = split("heldout", 8)[0]
    v, g = r.value_and_grad(x)
    xr = x.clone().requires_grad_(True)
    r.value(xr).sum().backward()
    assert v.shape == (8,) and torch.allclose(g, xr.grad)
    assert float(r(x + 0.05 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).mean()) > float(v.mean())
    with pytest.raises(ValueError, match="valid"):
        task.reward("clip")
    with pytest.raises(ValueError, match="target class"):
        ClassLogProbReward(task.classifier, 99)


def test_missing_and_corrupt_checkpoints_name_the_rebuild_command(tmp_path, monkeypatch):
    with pytest.raises(AssetError, match="train_image_teacher.py"):
        load_asset("shapes_teacher.pt", "shapes_teacher", TinyUNet, tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AssetError, match="cannot be read"):
        load_asset("shapes_classifier.pt", "shapes_classifier", ShapeClassifier, bad)
    # a readable checkpoint of the wrong kind
    with pytest.raises(AssetError, match="not a .* 'shapes_teacher' file"):
        load_asset("shapes_teacher.pt", "shapes_teacher", TinyUNet, assets.ASSET_DIR / "shapes_classifier.pt")
    # a file in the asset folder whose hash differs from the manifest (truncated download)
    fake_dir = tmp_path / "assets"
    fake_dir.mkdir()
    shutil.copy(assets.ASSET_DIR / "shapes_classifier.pt", fake_dir / "shapes_classifier.pt")
    man = json.loads(assets.MANIFEST.read_text())
    man["shapes_classifier.pt"]["sha256"] = "0" * 64
    (fake_dir / "MANIFEST.json").write_text(json.dumps(man))
    monkeypatch.setattr(assets, "ASSET_DIR", fake_dir)
    monkeypatch.setattr(assets, "MANIFEST", fake_dir / "MANIFEST.json")
    with pytest.raises(AssetError, match="(?s)SHA-256.*python python/train_classifier.py"):
        load_asset("shapes_classifier.pt", "shapes_classifier", ShapeClassifier)


def test_committed_checkpoints_are_small_and_recorded():
    man = json.loads(assets.MANIFEST.read_text())
    total = 0
    for name, cmd in assets.REBUILD.items():
        path = assets.ASSET_DIR / name
        total += path.stat().st_size
        assert man[name]["sha256"] == assets.sha256(path)
        assert man[name]["command"].split(" --out")[0] == cmd.split(" --out")[0]
    assert total < 20 * 2 ** 20

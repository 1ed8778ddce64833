"""Tests for tokgen.data: shapes, Fashion-MNIST (from Debian's files) and image folders."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tokgen.data import (
    FashionMNISTDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    ShapesDataModule,
    ShapesDataset,
)

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"

# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def test_shapes_deterministic_and_index_dependent():
    a, b = ShapesDataset(8, seed=3), ShapesDataset(8, seed=3)
    for i in range(8):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"])
        assert sa["label"] == sb["label"] and sa["num_shapes"] == sb["num_shapes"]
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], ShapesDataset(8, seed=4)[0]["image"])
    # Random access gives the same image as sequential access.
    assert torch.equal(a[5]["image"], ShapesDataset(8, seed=3)[5]["image"])


@pytest.mark.parametrize("image_size,background", [(32, "mixed"), (24, "plain"), (96, "gradient")])
def test_shapes_sample_format(image_size, background):
    ds = ShapesDataset(16, image_size=image_size, min_shapes=2, max_shapes=3, background=background)
    assert ds.kinds == ("circle", "square", "triangle")
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, image_size, image_size) and s["image"].dtype == torch.float32
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        assert s["label"].dtype == torch.int64 and s["label"].ndim == 0 and 0 <= s["label"] < 3
        assert s["num_shapes"].dtype == torch.int64 and 2 <= s["num_shapes"] <= 3


def test_shapes_counts_cover_range_and_match_colours():
    ds = ShapesDataset(200, min_shapes=1, max_shapes=4, seed=1, background="plain")
    counts = [int(ds[i]["num_shapes"]) for i in range(len(ds))]
    assert set(counts) == {1, 2, 3, 4}
    labels = [int(ds[i]["label"]) for i in range(len(ds))]
    assert set(labels) == {0, 1, 2}
    # On a plain background with one shape, the image holds exactly 2 dominant colours.
    one = next(i for i, c in enumerate(counts) if c == 1)
    pixels = ds[one]["image"].flatten(1).T  # (H*W, 3)
    _, freq = torch.unique(pixels, dim=0, return_counts=True)
    assert freq.sort(descending=True).values[:2].sum() > 0.9 * len(pixels)


def test_shapes_exact_count_setting():
    ds = ShapesDataset(10, min_shapes=3, max_shapes=3)
    assert all(int(ds[i]["num_shapes"]) == 3 for i in range(10))


def test_shapes_index_out_of_range():
    with pytest.raises(IndexError):
        ShapesDataset(3)[3]


def test_shapes_datamodule_disjoint_splits_and_batches():
    dm = ShapesDataModule(train_size=64, val_size=16, test_size=16, batch_size=8, val_batch_size=5, seed=7)
    assert (dm.image_size, dm.channels, dm.num_classes) == (32, 3, 3)  # known before setup
    dm.setup("fit")
    seeds = {dm.train_set.seed, dm.val_set.seed, dm.test_set.seed}
    assert len(seeds) == 3
    train = torch.stack([dm.train_set[i]["image"] for i in range(16)])
    val = torch.stack([dm.val_set[i]["image"] for i in range(16)])
    assert not any(torch.equal(t, v) for t in train for v in val)

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert batch["label"].shape == (8,) and batch["num_shapes"].shape == (8,)
    assert len(dm.train_dataloader()) == 8  # 64 / 8, drop_last
    assert len(dm.val_dataloader()) == 4  # ceil(16 / 5), no drop
    assert next(iter(dm.test_dataloader()))["image"].shape == (5, 3, 32, 32)
    # Shuffle order is seeded: two fresh loaders give the same first batch.
    first = next(iter(dm.train_dataloader()))["image"]
    assert torch.equal(first, batch["image"])
    # Validation is not shuffled.
    assert torch.equal(next(iter(dm.val_dataloader()))["image"][0], dm.val_set[0]["image"])


def test_dataloader_without_explicit_setup():
    dm = ShapesDataModule(train_size=8, val_size=4, test_size=4, batch_size=4)
    assert next(iter(dm.val_dataloader()))["image"].shape == (4, 3, 32, 32)


@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(batch_size=0), ["batch_size", "0"]),
        (dict(num_workers=-1), ["num_workers", "-1"]),
        (dict(val_batch_size=0), ["val_batch_size", "0"]),
        (dict(seed=-3), ["seed", "-3"]),
        (dict(image_size=4), ["image_size", "4"]),
        (dict(min_shapes=0), ["min_shapes", "0"]),
        (dict(min_shapes=3, max_shapes=2), ["max_shapes", "2"]),
        (dict(background="stripes"), ["background", "stripes", "gradient"]),
        (dict(train_size=0), ["train_size", "0"]),
        (dict(batch_size=2.5), ["batch_size", "2.5"]),
    ],
)
def test_shapes_bad_args(kwargs, names):
    with pytest.raises(ValueError) as err:
        ShapesDataModule(**kwargs)
    for name in names:
        assert name in str(err.value)


def test_batch_larger_than_train_set_fails_loudly():
    dm = ShapesDataModule(train_size=4, batch_size=8)
    with pytest.raises(ValueError, match="batch_size=8"):
        dm.train_dataloader()


def test_datamodules_are_image_datamodules():
    for cls in (ShapesDataModule, FashionMNISTDataModule, ImageFolderDataModule):
        assert issubclass(cls, ImageDataModule)


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    if not os.path.isfile(os.path.join(DEBIAN_FMNIST, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"{DEBIAN_FMNIST} is absent (install Debian's dataset-fashion-mnist to run this test)")
    return str(tmp_path_factory.mktemp("fmnist"))


def test_fmnist_from_debian_files(fmnist_root):
    dm = FashionMNISTDataModule(root=fmnist_root, val_size=100, batch_size=16)
    assert (dm.image_size, dm.channels, dm.num_classes) == (32, 3, 10)
    dm.prepare_data()
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert os.path.isfile(os.path.join(fmnist_root, "FashionMNIST", "raw", name))
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (60000, 100)
    dm.setup("test")
    assert len(dm.test_set) == 10000
    assert torch.equal(dm.val_set[7]["image"], dm.test_set[7]["image"])

    batch = next(iter(dm.train_dataloader()))
    images = batch["image"]
    assert images.shape == (16, 3, 32, 32) and batch["label"].shape == (16,)
    assert batch["label"].dtype == torch.int64
    assert images.min() >= -1 and images.max() <= 1
    # 28 -> 32: a 2-pixel black border, and grey replicated to 3 channels.
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (images[:, :, border] == -1).all()
    assert images[:, :, 2:30, 2:30].max() > 0.5
    assert torch.equal(images[:, 0], images[:, 2])


def test_fmnist_resize_and_grey(fmnist_root):
    # Reuses the raw files placed by the previous test when run in the same session (or copies them).
    dm = FashionMNISTDataModule(root=fmnist_root, image_size=27, channels=1, val_size=10)
    dm.setup("validate")
    image = dm.val_set[0]["image"]
    assert image.shape == (1, 27, 27) and image.min() >= -1 and image.max() <= 1


def test_fmnist_missing_files(tmp_path):
    root = tmp_path / "nothing"
    dm = FashionMNISTDataModule(root=str(root), raw_source=str(tmp_path / "no_source"), download=False)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(root) in msg and "no_source" in msg
    assert "dataset-fashion-mnist" in msg and "download: true" in msg


@pytest.mark.parametrize(
    "kwargs,names",
    [(dict(channels=2), ["channels", "2"]), (dict(val_size=10001), ["val_size", "10001"]), (dict(image_size=0), ["image_size", "0"])],
)
def test_fmnist_bad_args(kwargs, names):
    with pytest.raises(ValueError) as err:
        FashionMNISTDataModule(**kwargs)
    for name in names:
        assert name in str(err.value)


# --------------------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------------------


def _write_png(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    for i in range(5):
        _write_png(root / "cats" / f"c{i}.png", (40, 30), (255, 0, 0))  # landscape, red
        _write_png(root / "dogs" / f"d{i}.PNG", (20, 50), (0, 0, 255))  # portrait, blue
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_folder_labels_and_sizes(image_folder):
    dm = ImageFolderDataModule(root=str(image_folder), image_size=16, val_fraction=0.2, batch_size=4, seed=1)
    assert (dm.image_size, dm.channels, dm.num_classes) == (16, 3, 2)
    dm.setup("fit")
    assert dm.classes == ["cats", "dogs"]
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2 and dm.test_set is dm.val_set
    assert {p for p, _ in dm.train_set.samples}.isdisjoint(p for p, _ in dm.val_set.samples)
    for ds in (dm.train_set, dm.val_set):
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == (3, 16, 16) and s["label"].dtype == torch.int64
            red, blue = s["image"][0].mean(), s["image"][2].mean()
            expected = 0 if red > blue else 1  # red -> cats (0), blue -> dogs (1)
            assert int(s["label"]) == expected
            assert s["image"].min() >= -1 and s["image"].max() <= 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].shape == (4,)
    # The split is deterministic in the seed.
    dm2 = ImageFolderDataModule(root=str(image_folder), image_size=16, val_fraction=0.2, seed=1)
    dm2.setup("fit")
    assert dm2.val_set.samples == dm.val_set.samples


def test_folder_without_class_subfolders_and_val_root(image_folder, tmp_path):
    val = tmp_path / "val"
    _write_png(val / "x" / "deep" / "v.jpg", (64, 64), (0, 255, 0))
    dm = ImageFolderDataModule(root=str(image_folder), val_root=str(val), class_subfolders=False, image_size=8)
    assert dm.num_classes == 1
    dm.setup("fit")
    assert len(dm.train_set) == 10 and len(dm.val_set) == 1
    assert {label for _, label in dm.train_set.samples} == {0}
    assert dm.val_set[0]["image"].shape == (3, 8, 8)


def test_folder_center_crop_keeps_the_middle(tmp_path):
    # 60x20 image: left third black, middle white, right third black -> after crop all white.
    img = np.zeros((20, 60, 3), dtype=np.uint8)
    img[:, 20:40] = 255
    (tmp_path / "a").mkdir()
    Image.fromarray(img).save(tmp_path / "a" / "x.png")
    Image.fromarray(img).save(tmp_path / "a" / "y.png")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=10, val_fraction=0.5, random_flip=False)
    dm.setup()
    assert dm.train_set[0]["image"][:, :, 2:8].min() > 0.9


def test_folder_missing_root_raises_in_setup(tmp_path):
    missing = tmp_path / "imagenet" / "train"
    dm = ImageFolderDataModule(root=str(missing), num_classes=1000)  # constructible without the data
    assert dm.num_classes == 1000
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        dm.setup("fit")


def test_folder_without_images(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    dm = ImageFolderDataModule(root=str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    assert str(tmp_path) in str(err.value) and ".png" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(val_fraction=1.5), ["val_fraction", "1.5"]),
        (dict(image_size=-1), ["image_size", "-1"]),
        (dict(batch_size=0), ["batch_size", "0"]),
        (dict(extensions=()), ["extensions", "()"]),
    ],
)
def test_folder_bad_args(kwargs, names):
    with pytest.raises(ValueError) as err:
        ImageFolderDataModule(root="/nonexistent/path", **kwargs)
    for name in names:
        assert name in str(err.value)


# --------------------------------------------------------------------------------------------------
# Lightning integration
# --------------------------------------------------------------------------------------------------


def test_trainer_consumes_shapes_datamodule(tmp_path):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3 * 16 * 16, 3)

        def training_step(self, batch, batch_idx):
            logits = self.head(batch["image"].flatten(1))  # (B, 3)
            return torch.nn.functional.cross_entropy(logits, batch["label"])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.head(batch["image"].flatten(1)), batch["label"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ShapesDataModule(image_size=16, train_size=32, val_size=8, test_size=8, batch_size=8)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )
    trainer.fit(Probe(), datamodule=dm)
    assert trainer.global_step == 4
    assert dm.hparams.image_size == 16


def test_flat_folder_is_detected_and_split_by_file(tmp_path):
    """A flat folder of photos (no class subfolders) works with the defaults: one class, ``val_size`` files held
    out (disjoint from training), the held-out files in a seeded random order (so a grid of the first validation
    images is not the first file names), grey output with channels=1."""
    root = tmp_path / "photos"
    for i in range(30):
        _write_png(root / f"photo{i // 10}_{i:03d}.png", (12, 12), (8 * i, 255 - 8 * i, 100))
    dm = ImageFolderDataModule(root=str(root), image_size=8, val_size=6, channels=1, seed=0)
    assert dm.class_subfolders is False and dm.num_classes == 1
    dm.setup("fit")
    val = [p for p, _ in dm.val_set.samples]
    assert len(val) == 6 and len(dm.train_set) == 24
    assert set(val).isdisjoint(p for p, _ in dm.train_set.samples)
    assert val != sorted(val)  # random order, from all over the folder
    assert len({os.path.basename(p)[:6] for p in val}) > 1  # from more than one photo
    assert dm.val_set[0]["image"].shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"val_size=30 leaves no training image.*accepted 1..29"):
        ImageFolderDataModule(root=str(root), image_size=8, val_size=30).setup("fit")
    with pytest.raises(ValueError, match="channels must be 1 .* or 3 .*got 2"):
        ImageFolderDataModule(root=str(root), channels=2)

import hashlib
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pml_grouploss.datasets import EMBEDDED_TEST_ALPHABETS, EMBEDDED_TRAIN_ALPHABETS, Omniglot
from pml_grouploss.datasets import omniglot as omniglot_module
from pml_grouploss.datasets.omniglot import EMBEDDED_FILE, preprocess

from dataset_trees import write_omniglot_tree

# characters per alphabet in the two "small" archives (Greek and Latin counted once)
CHARS = {
    "Balinese": 24,
    "Early_Aramaic": 22,
    "Japanese_(katakana)": 47,
    "Sanskrit": 42,
    "Greek": 24,
    "Korean": 40,
    "Latin": 26,
    "Tagalog": 17,
}


def test_embedded_file_is_the_committed_one():
    with np.load(EMBEDDED_FILE) as f:
        images = f["images"]
        assert images.dtype == np.uint8 and images.shape == (4840, 28, 28)
        digest = hashlib.sha256(images.tobytes()).hexdigest()
        assert digest == "e8f3aff0bddd376f2f34ec5353aae14e41682ef4a089d9236c4495857a4bae23"
        assert int(images.astype(np.int64).sum()) == 77946040
    license_path = os.path.join(os.path.dirname(EMBEDDED_FILE), "LICENSE")
    assert (
        "MIT License" in open(license_path).read() and "Brenden Lake" in open(license_path).read()
    )


@pytest.mark.parametrize(
    "split,n_chars,alphabets,offset",
    [
        ("train", 135, EMBEDDED_TRAIN_ALPHABETS, 0),
        ("test", 107, EMBEDDED_TEST_ALPHABETS, 135),  # test ids follow the 135 training ids
        ("train+test", 242, EMBEDDED_TRAIN_ALPHABETS + EMBEDDED_TEST_ALPHABETS, 0),
    ],
)
def test_embedded_splits(split, n_chars, alphabets, offset):
    ds = Omniglot(split=split)
    assert ds.num_classes == n_chars and len(ds) == 20 * n_chars
    assert sorted(set(ds.alphabets)) == sorted(alphabets)
    # labels contiguous offset..offset+C-1, 20 drawers per character, each drawer once
    assert ds.label_offset == offset and int(ds.targets.min()) == offset
    counts = torch.bincount(ds.targets - offset, minlength=n_chars)
    assert counts.tolist() == [20] * n_chars
    for c in (offset, offset + n_chars - 1):
        assert sorted(np.array(ds.drawers)[ds.targets.numpy() == c]) == list(range(1, 21))
    for a in set(ds.alphabets):  # Greek and Latin deduplicated: 20 images per character
        assert ds.alphabets.count(a) == 20 * CHARS[a]
    assert ds.labels == ds.targets.tolist()


def test_embedded_split_is_alphabet_and_class_disjoint():
    train, test = Omniglot(split="train"), Omniglot(split="test")
    assert not set(train.classes) & set(test.classes)
    assert not set(train.alphabets) & set(test.alphabets)
    both = Omniglot(split="train+test")
    assert train.classes + test.classes == both.classes
    # the same character has the same label and the same pixels in both views
    name = test.classes[5]
    a = test.data[test.targets == 135 + 5]
    assert both.classes.index(name) == 135 + 5 and a.shape == (20, 28, 28)
    assert torch.equal(a, both.data[both.targets == 135 + 5])


def test_getitem_pil_and_transforms():
    ds = Omniglot(
        split="test",
        transform=lambda im: torch.tensor(np.asarray(im)) / 255.0,
        target_transform=lambda y: y + 1000,
    )
    x, y = ds[21]  # drawer 2 of the second test character: label 135 + 1
    assert x.shape == (28, 28) and y == 1136
    assert torch.allclose(x, ds.data[21].float() / 255.0)
    img, label = Omniglot(split="test")[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28)
    assert label == 135
    # ink is bright, background dark: the border of a character is background
    assert ds.data[:, 0, :].float().mean() < 5 and ds.data.float().mean() > 10


def test_preprocess_area_average_and_inversion():
    white = Image.new("L", (105, 105), 255)
    assert preprocess(white).tolist() == np.zeros((28, 28), np.uint8).tolist()
    half = np.full((105, 105), 255, np.uint8)
    half[:, :52] = 0  # black ink on the left 52 of 105 columns
    out = preprocess(Image.fromarray(half))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert (out[:, :13] == 255).all() and (out[:, 14:] == 0).all()
    # column 13 spans source x in [48.75, 52.5): PIL's BOX filter averages the source pixels whose
    # centres fall inside (49, 50, 51, 52), three of which are ink -> 255 * 3/4
    assert abs(int(out[0, 13]) - 255 * 3 / 4) <= 1


def test_full_directory_layout(tmp_path):
    write_omniglot_tree(
        str(tmp_path), background={"Alpha": 3, "Beta": 2}, evaluation={"Gamma": 3}, drawers=4
    )
    train = Omniglot(root=str(tmp_path), split="train")
    test = Omniglot(root=str(tmp_path), split="test")
    assert train.num_classes == 5 and len(train) == 20
    assert test.num_classes == 3 and len(test) == 12
    assert train.labels[::4] == [0, 1, 2, 3, 4] and test.labels[::4] == [5, 6, 7]
    assert train.classes[0] == "Alpha/character01" and set(test.alphabets) == {"Gamma"}
    # root may also be the omniglot-py folder; images go through the same preprocess
    again = Omniglot(root=str(tmp_path / "omniglot-py"), split="test")
    assert torch.equal(again.data, test.data)
    path = tmp_path / "omniglot-py/images_evaluation/Gamma/character01"
    first = sorted(os.listdir(path))[0]
    assert np.array_equal(test.data[0].numpy(), preprocess(Image.open(path / first)))
    big = Omniglot(root=str(tmp_path), split="test", image_size=35)
    assert big.data.shape == (12, 35, 35)
    custom = Omniglot(
        root=str(tmp_path),
        split="train",
        train_alphabets=["Beta"],
        test_alphabets=["Alpha", "Gamma"],
    )
    assert custom.num_classes == 2 and set(custom.alphabets) == {"Beta"}
    custom_test = Omniglot(
        root=str(tmp_path), split="test", train_alphabets=["Beta"], test_alphabets=["Gamma"]
    )
    assert custom_test.label_offset == 2 and sorted(set(custom_test.labels)) == [2, 3, 4]


def test_small_archives_layout_gets_documented_split(tmp_path, monkeypatch):
    # unzipped images_background_small1/2 with the 8 alphabets -> the embedded split
    for i, alphabets in enumerate(
        (
            ("Balinese", "Greek", "Korean", "Latin", "Early_Aramaic"),
            ("Greek", "Latin", "Japanese_(katakana)", "Sanskrit", "Tagalog"),
        )
    ):
        d = tmp_path / "tmp"
        write_omniglot_tree(
            str(d), background={a: 1 for a in alphabets}, evaluation={}, drawers=2, seed=i
        )
        os.rename(d / "omniglot-py/images_background", tmp_path / f"images_background_small{i + 1}")
    train = Omniglot(root=str(tmp_path), split="train")
    test = Omniglot(root=str(tmp_path), split="test")
    assert sorted(set(train.alphabets)) == sorted(EMBEDDED_TRAIN_ALPHABETS)
    assert sorted(set(test.alphabets)) == sorted(EMBEDDED_TEST_ALPHABETS)
    assert test.alphabets.count("Greek") == 2  # duplicate kept once


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="images_background.zip.*omniglot-py"):
        Omniglot(root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="split"):
        Omniglot(split="validation")
    with pytest.raises(ValueError, match="image_size"):
        Omniglot(image_size=64)
    with pytest.raises(ValueError, match="overlap"):
        Omniglot(train_alphabets=["Greek"], test_alphabets=["Greek", "Latin"])
    with pytest.raises(ValueError, match="unknown alphabets.*Klingon"):
        Omniglot(train_alphabets=["Klingon"])
    (tmp_path / "omniglot-py/images_background/A/character01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no <id>_<drawer>.png"):
        Omniglot(root=str(tmp_path))
    monkeypatch.setattr(omniglot_module, "EMBEDDED_FILE", str(tmp_path / "gone.npz"))
    with pytest.raises(FileNotFoundError, match="build_embedded_omniglot.py"):
        Omniglot()


def test_an_alphabet_folder_without_images_is_named(tmp_path):
    write_omniglot_tree(str(tmp_path), background={"Alpha": 2}, evaluation={"Gamma": 1},
                        drawers=2)
    (tmp_path / "omniglot-py/images_evaluation/Delta/character01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"without <id>_<drawer>\.png images in "
                       r"characterNN/ sub-folders: \['Delta'\].*Re-download"):
        Omniglot(root=str(tmp_path), split="train")  # was "test_alphabets: unknown alphabets"


def test_a_split_without_alphabets_is_an_error_not_an_empty_dataset(tmp_path):
    write_omniglot_tree(str(tmp_path), background={"Alpha": 2}, evaluation={}, drawers=2)
    # the present alphabets still load (train+test = the training alphabets)
    assert len(Omniglot(root=str(tmp_path), split="train")) == 4
    assert len(Omniglot(root=str(tmp_path), split="train+test")) == 4
    with pytest.raises(FileNotFoundError, match=r"split 'test' has no alphabets: no "
                       r"images_evaluation/<alphabet>/ folder.*images_evaluation\.zip"):
        Omniglot(root=str(tmp_path), split="test")  # was a test split of length 0
    custom = Omniglot(
        root=str(tmp_path), split="test", train_alphabets=[], test_alphabets=["Alpha"]
    )
    assert custom.num_classes == 2 and custom.label_offset == 0
    for arg, split in (("train_alphabets", "train"), ("test_alphabets", "test")):
        with pytest.raises(ValueError, match=rf"{arg} is empty, so split '{split}' would have no "
                           rf"images; name at least one of \['Balinese'"):
            Omniglot(split=split, **{arg: []})
    with pytest.raises(ValueError, match="train_alphabets is empty, so split 'train\\+test'"):
        Omniglot(split="train+test", train_alphabets=[], test_alphabets=[])
    with pytest.raises(TypeError, match=r"test_alphabets must be a sequence of alphabet names, "
                       r"got the str 'Greek'; write \['Greek'\]"):
        Omniglot(split="test", test_alphabets="Greek")


@pytest.mark.parametrize(
    "size,error,message",
    [
        (2.5, TypeError, "image_size must be an int, got float 2.5"),
        (28.0, TypeError, "image_size must be an int, got float 28.0"),
        ("x", TypeError, "image_size must be an int, got str 'x'"),
        (None, TypeError, "image_size must be an int, got NoneType None"),
        (0, ValueError, "image_size must be an int >= 1, got 0"),
    ],
)
def test_image_size_must_be_a_positive_int(tmp_path, size, error, message):
    write_omniglot_tree(str(tmp_path), background={"Alpha": 1}, evaluation={"Gamma": 1}, drawers=1)
    for root in (None, str(tmp_path)):
        with pytest.raises(error, match=re.escape(message)):
            Omniglot(root=root, image_size=size)
    assert Omniglot(root=str(tmp_path), image_size=np.int64(3)).data.shape == (1, 3, 3)


def test_flags_roots_and_alphabet_lists_are_checked(tmp_path, monkeypatch):
    # download="False" is truthy: it started a download; unique_labels="False" kept unique ids
    monkeypatch.setattr(Omniglot, "_download", lambda root: pytest.fail("download attempted"))
    write_omniglot_tree(str(tmp_path), background={"Alpha": 1}, evaluation={"Gamma": 1}, drawers=1)
    with pytest.raises(TypeError, match="^download must be True or False, got str 'False'"):
        Omniglot(root=str(tmp_path), download="False")
    with pytest.raises(TypeError, match="^unique_labels must be True or False, got str 'False'"):
        Omniglot(split="test", unique_labels="False")
    with pytest.raises(TypeError, match=r"^root must be a directory path .*got int 5"):
        Omniglot(root=5)
    with pytest.raises(TypeError, match="^transform must be callable or None, got int 3"):
        Omniglot(transform=3)
    for bad in (3, [3], [["Greek"]]):  # were "'int' object is not iterable", "unhashable type"
        with pytest.raises(TypeError, match=r"^test_alphabets must be a sequence of alphabet "
                           r"names \(str\)"):
            Omniglot(split="test", test_alphabets=bad)
    assert Omniglot(root=tmp_path, test_alphabets=iter(["Gamma"]), split="test").num_classes == 1

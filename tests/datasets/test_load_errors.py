"""Damaged files fail with an error naming the file, the line and what to do (issue 8, item 19)."""

import os
import re

import pytest

from pml_grouploss.datasets import CUB, Cars196, Omniglot, StanfordOnlineProducts

from dataset_trees import (
    drop_last_line,
    rewrite_line,
    truncate_file,
    write_cars_tree,
    write_cub_tree,
    write_omniglot_tree,
    write_sop_tree,
)


def test_truncated_omniglot_png_names_the_file(tmp_path):
    write_omniglot_tree(str(tmp_path), background={"Alpha": 2}, evaluation={"Gamma": 1}, drawers=2)
    folder = tmp_path / "omniglot-py/images_background/Alpha/character02"
    damaged = str(folder / sorted(os.listdir(folder))[1])
    assert truncate_file(damaged, 0.5) > 0
    with pytest.raises(OSError, match=re.escape(damaged)) as info:
        Omniglot(root=str(tmp_path))
    message = str(info.value)
    assert (
        "truncated" in message and "Re-download" in message and "images_background.zip" in message
    )


def _cub(tmp_path):
    write_cub_tree(str(tmp_path), n_classes=200, per_class=1)
    base = tmp_path / "CUB_200_2011"
    return str(base / "images.txt"), str(base / "image_class_labels.txt")


@pytest.mark.parametrize(
    "line,got",
    [
        ("3 003.Bird_3/a.jpg extra", "'3 003.Bird_3/a.jpg extra'"),
        ("3", "'3'"),
        ("", "an empty line"),
    ],
)
def test_malformed_cub_images_txt_names_file_and_line(tmp_path, line, got):
    images_txt, _ = _cub(tmp_path)
    rewrite_line(images_txt, 3, line)
    expected = f"{images_txt}, line 3: expected '<image_id> <relative image path>', got {got}"
    for split in ("train", "test"):  # PML reads line 3 (a training class) only for train
        with pytest.raises(ValueError, match=re.escape(expected)):
            CUB(str(tmp_path), split=split)


def test_malformed_cub_labels_and_misaligned_files(tmp_path):
    images_txt, labels_txt = _cub(tmp_path)
    rewrite_line(labels_txt, 150, "150 Bird_150")
    with pytest.raises(ValueError, match=re.escape(f"{labels_txt}, line 150: expected")):
        CUB(str(tmp_path), split="test")
    rewrite_line(labels_txt, 150, "151 150")  # PML silently drops a pair whose ids differ
    with pytest.raises(ValueError, match="line 150: image id 150 in .*images.txt but 151"):
        CUB(str(tmp_path), split="test")
    rewrite_line(labels_txt, 150, "150 150")
    assert len(CUB(str(tmp_path), split="test")) == 100
    drop_last_line(images_txt)  # PML silently drops the last image
    with pytest.raises(ValueError, match="images.txt has 199 lines but .* has 200"):
        CUB(str(tmp_path), split="test")


def test_download_reports_the_malformed_line_not_a_download_failure(tmp_path):
    images_txt, _ = _cub(tmp_path)
    rewrite_line(images_txt, 7, "7 a b")  # root not empty: PML parses instead of downloading
    with pytest.raises(ValueError, match=re.escape(f"{images_txt}, line 7")):
        CUB(str(tmp_path), split="train", download=True)


@pytest.mark.parametrize(
    "line,message",
    [
        ("00002.jpg,1,2,20,22", "line 2: expected '<file>,<x1>,<y1>,<x2>,<y2>,<class>'"),
        ("00002.jpg,1,2,20,22,Make1", "line 2: expected '<file>,<x1>,<y1>,<x2>,<y2>,<class>'"),
        ("00002.jpg,1,2,20,22,0", "line 2: class 0 is not a line of names.csv (expected 1..196)"),
        ("00002.jpg,1,2,20,22,197", "line 2: class 197 is not a line of names.csv"),
    ],
)
def test_malformed_cars_annotation_names_file_and_line(tmp_path, line, message):
    write_cars_tree(str(tmp_path), n_classes=196, per_class=2)
    anno = str(tmp_path / "anno_test.csv")
    rewrite_line(anno, 2, line)
    with pytest.raises(ValueError, match=re.escape(f"{anno}, {message}")):
        Cars196(str(tmp_path), split="train")


@pytest.mark.parametrize(
    "number,line,message",
    [
        (3, "3 2 1", "line 3: expected '<image_id> <class_id> <super_class_id> <path>'"),
        (3, "3 two 1 cabinet_final/2_0.JPG", "line 3: expected '<image_id> <class_id>"),
        (3, "3 2 1 cabinet_final/2 0.JPG", "line 3: expected '<image_id> <class_id>"),
        (1, "1 1 2 cabinet_final/1_0.JPG", "line 1: expected the header image_id class_id"),
    ],
)
def test_malformed_sop_annotation_names_file_and_line(tmp_path, number, line, message):
    write_sop_tree(str(tmp_path), n_train=3, n_test=2, per_class=2)
    ebay = str(tmp_path / "Stanford_Online_Products/Ebay_train.txt")
    rewrite_line(ebay, number, line)
    with pytest.raises(ValueError, match=re.escape(f"{ebay}, {message}")):
        StanfordOnlineProducts(str(tmp_path), split="train")


def test_damaged_adapter_image_names_the_file(tmp_path):
    write_cub_tree(str(tmp_path), n_classes=200, per_class=2)
    train = CUB(str(tmp_path), split="train")
    assert truncate_file(train.paths[3], 0.3) > 0
    with pytest.raises(OSError, match=re.escape(train.paths[3])) as info:
        train[3]
    assert "damaged" in str(info.value) and "CUB_200_2011.tgz" in str(info.value)
    os.remove(train.paths[5])
    with pytest.raises(FileNotFoundError, match=re.escape(train.paths[5])):
        train[5]
    assert train[4][0].size == (24, 24)  # the intact images still load


@pytest.mark.parametrize("class_id", ["0", "201", "999", "-3"])
def test_cub_class_id_outside_1_to_200_names_file_and_line(tmp_path, class_id):
    _, labels_txt = _cub(tmp_path)  # PML keeps only ids 1..200: the image vanished from all splits
    rewrite_line(labels_txt, 5, f"5 {class_id}")
    expected = f"{labels_txt}, line 5: class id {class_id} is not a CUB-200-2011 class"
    for split in ("train", "test", "train+test"):
        with pytest.raises(ValueError, match=re.escape(expected) + r" \(expected 1\.\.200;"):
            CUB(str(tmp_path), split=split)


def test_small_cub_and_cars_trees_still_load(tmp_path):
    # fake trees with fewer classes than the real datasets: every id is in range
    write_cub_tree(str(tmp_path / "cub"), n_classes=4, per_class=2)
    assert len(CUB(str(tmp_path / "cub"), split="train+test")) == 8
    write_cars_tree(str(tmp_path / "cars"), n_classes=4, per_class=2)
    cars = Cars196(str(tmp_path / "cars"), split="train")
    assert (len(cars), cars.num_classes) == (8, 4)


@pytest.mark.parametrize("class_id", ["197", "250", "300"])
def test_cars_class_beyond_196_is_refused_even_with_a_longer_names_csv(tmp_path, class_id):
    write_cars_tree(str(tmp_path), n_classes=4, per_class=2)
    with open(tmp_path / "names.csv", "a") as f:  # 300 names: class 250 is a line of names.csv
        f.write("\n".join(f"Extra {i}" for i in range(296)) + "\n")
    anno = str(tmp_path / "anno_train.csv")
    rewrite_line(anno, 1, f"00001.jpg,1,2,20,22,{class_id}")  # PML would drop the image
    expected = f"{anno}, line 1: class {class_id} is not a Cars196 class"
    with pytest.raises(ValueError, match=re.escape(expected) + r".*\(expected 1\.\.196\)"):
        Cars196(str(tmp_path), split="train+test")


def test_sop_class_in_both_ebay_files_is_refused(tmp_path):
    write_sop_tree(str(tmp_path), n_train=3, n_test=2, per_class=2)
    base = tmp_path / "Stanford_Online_Products"
    test_txt = str(base / "Ebay_test.txt")
    rewrite_line(test_txt, 4, "9 1 2 cabinet_final/5_0.JPG")  # class 1 is a training class
    expected = (
        f"{base / 'Ebay_train.txt'} and {test_txt} share class_id(s) 1 (first in line 4 of "
        "Ebay_test.txt); the splits must be class-disjoint"
    )
    for split in ("train", "test", "train+test"):  # train 0, test 3: two labels for one class
        with pytest.raises(ValueError, match=re.escape(expected)):
            StanfordOnlineProducts(str(tmp_path), split=split)


def test_binary_annotation_files_are_named(tmp_path):
    # were a bare UnicodeDecodeError ("'utf-8' codec can't decode byte 0xff ...") naming no file
    images_txt, _ = _cub(tmp_path / "cub")
    with open(images_txt, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 JFIF\n")
    with pytest.raises(ValueError, match=re.escape(f"{images_txt} is not a text file (")):
        CUB(str(tmp_path / "cub"))
    write_cars_tree(str(tmp_path / "cars"), n_classes=4, per_class=2)
    names = str(tmp_path / "cars" / "names.csv")
    with open(names, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n\xff")
    with pytest.raises(ValueError, match=re.escape(f"{names} is not a text file (")):
        Cars196(str(tmp_path / "cars"))

"""Listing a source: image folders by depth, CSVs by columns, and clear errors."""

import pytest

from conftest import write_csv, write_image
from tfrecords.errors import SourceError
from tfrecords.sources import scan_source


def test_folder_with_categories_is_detected_by_depth(tmp_path):
    write_image(tmp_path / "shoes" / "p1" / "a.jpg")
    write_image(tmp_path / "shoes" / "p1" / "b.jpg")
    write_image(tmp_path / "bags" / "p2" / "a.jpg")
    images = scan_source(tmp_path)
    assert [(i.image_id, i.product, i.category) for i in images] == [
        ("bags/p2/a.jpg", "p2", "bags"),
        ("shoes/p1/a.jpg", "p1", "shoes"),
        ("shoes/p1/b.jpg", "p1", "shoes"),
    ]


def test_folder_without_categories_uses_product_folders(tmp_path):
    write_image(tmp_path / "p1" / "a.jpg")
    write_image(tmp_path / "p2" / "a.png")
    images = scan_source(tmp_path)
    assert [(i.product, i.category) for i in images] == [("p1", None), ("p2", None)]


def test_hidden_files_are_ignored(tmp_path):
    write_image(tmp_path / "p1" / "a.jpg")
    write_image(tmp_path / "p1" / ".DS_Store", b"junk")
    assert [i.image_id for i in scan_source(tmp_path)] == ["p1/a.jpg"]


def test_folder_with_mixed_depths_is_an_error(tmp_path):
    write_image(tmp_path / "p1" / "a.jpg")
    write_image(tmp_path / "cat" / "p2" / "a.jpg")
    with pytest.raises(SourceError, match="several depths"):
        scan_source(tmp_path)


def test_csv_paths_are_relative_to_the_csv_or_absolute(tmp_path):
    relative = write_image(tmp_path / "img" / "a.jpg")
    absolute = write_image(tmp_path / "elsewhere" / "b.jpg")
    csv_path = write_csv(
        tmp_path / "list.csv",
        [{"path": "img/a.jpg", "product_id": "p1"}, {"path": str(absolute), "product_id": "p1"}],
    )
    images = {i.image_id: i for i in scan_source(csv_path)}
    assert images["img/a.jpg"].path.resolve() == relative.resolve()
    assert images[absolute.as_posix()].path == absolute
    assert all(i.category is None and i.split is None for i in images.values())


def test_csv_without_needed_columns_names_them(tmp_path):
    csv_path = write_csv(tmp_path / "list.csv", [{"file": "a.jpg", "sku": "p1"}])
    with pytest.raises(SourceError, match=r"missing column\(s\) path, product_id; found file, sku"):
        scan_source(csv_path)


@pytest.mark.parametrize("kind", ["empty folder", "header-only csv"])
def test_empty_source_is_an_error(tmp_path, kind):
    source = tmp_path / "src"
    if kind == "empty folder":
        source.mkdir()
    else:
        source.write_text("path,product_id\n")
    with pytest.raises(SourceError, match="names no images"):
        scan_source(source)


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        scan_source(tmp_path / "nope.csv")


def test_non_utf8_csv_is_a_clear_error(tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_bytes("path,product_id\ncaf\u00e9.jpg,p1\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8"):
        scan_source(csv_path)


def test_repeated_image_in_csv_names_both_rows(tmp_path):
    csv_path = write_csv(tmp_path / "list.csv", [{"path": "a.jpg", "product_id": "p1"}] * 2)
    with pytest.raises(SourceError, match="row 3 repeats the image 'a.jpg' of row 2"):
        scan_source(csv_path)


def test_empty_cell_and_unknown_split_name_the_row(tmp_path):
    empty = write_csv(tmp_path / "a.csv", [{"path": "a.jpg", "product_id": ""}])
    with pytest.raises(SourceError, match="row 2 has an empty 'product_id'"):
        scan_source(empty)
    unknown = write_csv(tmp_path / "b.csv", [{"path": "a.jpg", "product_id": "p", "split": "training"}])
    with pytest.raises(SourceError, match="row 2 has split 'training'"):
        scan_source(unknown)


def test_product_in_two_categories_is_an_error(tmp_path):
    csv_path = write_csv(
        tmp_path / "list.csv",
        [{"path": "a.jpg", "product_id": "p1", "category": "shoes"}, {"path": "b.jpg", "product_id": "p1", "category": "bags"}],
    )
    with pytest.raises(SourceError, match="product 'p1' is in category 'shoes' \\(row 2\\) and 'bags' \\(row 3\\)"):
        scan_source(csv_path)

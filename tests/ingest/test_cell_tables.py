"""Cell tables as segmentation pipelines write them: column spellings (scikit-image's row-first
centroid-0 / centroid-1 among them), a byte-order mark, rows that cannot be read, and shared
tables matched to images by id or file name."""

from __future__ import annotations

import pytest

from ingest.cell_tables import CellTableError, match_images, read_cell_table


def write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_scikit_image_centroids_are_row_first_and_its_label_is_no_cell_type(tmp_path):
    """regionprops_table writes centroid-0 (the row, y) before centroid-1 (the column, x), and
    `label` is the segmentation's instance number: taken as a type, every crop was its own class."""
    table = write(tmp_path / "cells.csv", "label,centroid-0,centroid-1\n7,10.5,200.25\n9,40,3\n")
    cells, rejects = read_cell_table(table, "cells.csv")
    assert rejects == []
    [(image, rows)] = cells.items()
    assert image is None
    assert [(c.x, c.y, c.cell_type, c.line) for c in rows] == [(200.25, 10.5, None, 2), (3.0, 40.0, None, 3)]


def test_an_ark_analysis_table_gives_its_metaclusters_as_cell_types(tmp_path):
    table = write(tmp_path / "cell_table.csv", "cell_size,fov,label,centroid-0,centroid-1,cell_meta_cluster\n"
                                               "310,fov0,1,5,6,CD4T\n120,fov0,2,7,8,tumor\n")
    cells, _ = read_cell_table(table, "cell_table.csv")
    assert [(c.x, c.y, c.cell_type) for c in cells["fov0"]] == [(6.0, 5.0, "CD4T"), (8.0, 7.0, "tumor")]


def test_headers_match_whatever_their_case_after_a_byte_order_mark(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM, which would otherwise stick to the first column name."""
    table = write(tmp_path / "cells.csv", "\ufeffX,Y,Cell_Type\n1,2,Neuron\n3,4,  \n5,6,Astrocyte \n", "utf-8")
    cells, rejects = read_cell_table(table, "cells.csv")
    assert rejects == []
    assert [(c.x, c.y, c.cell_type) for c in cells[None]] == [(1.0, 2.0, "Neuron"), (3.0, 4.0, None),
                                                              (5.0, 6.0, "Astrocyte")]


def test_a_table_without_a_type_column_gives_no_types(tmp_path):
    table = write(tmp_path / "cells.csv", "centroid_x,centroid_y,area\n1,2,30\n")
    cells, _ = read_cell_table(table, "cells.csv")
    assert [(c.x, c.y, c.cell_type) for c in cells[None]] == [(1.0, 2.0, None)]


def test_unreadable_rows_are_rejected_by_line_and_the_rest_kept(tmp_path):
    table = write(tmp_path / "cells.csv", "x,y\n1,2\n,5\nnan,3\n4,inf\nfour,4\n6,7\n8\n")
    cells, rejects = read_cell_table(table, "slide01.csv")
    assert [(c.x, c.y, c.line) for c in cells[None]] == [(1.0, 2.0, 2), (6.0, 7.0, 7)]
    assert [r.source_path for r in rejects] == ["slide01.csv:3", "slide01.csv:4", "slide01.csv:5", "slide01.csv:6",
                                                "slide01.csv:8"]
    assert all(r.reason.startswith("unreadable cell row: x=") for r in rejects)
    assert "x='four'" in rejects[3].reason and "y=None" in rejects[4].reason


def test_a_table_without_centre_columns_is_refused_naming_what_it_has(tmp_path):
    table = write(tmp_path / "cells.csv", "row,col,type\n1,2,a\n")
    with pytest.raises(CellTableError) as err:
        read_cell_table(table, "cells.csv")
    assert str(err.value).startswith("cells.csv: no cell centre columns")
    assert "['col', 'row', 'type']" in str(err.value)


def test_a_table_that_is_not_text_is_refused(tmp_path):
    table = write(tmp_path / "cells.csv", "x,y,cell_type\n1,2,Gliazelle \xe4\n", "latin-1")
    with pytest.raises(CellTableError, match=r"^cells.csv: unreadable cell table: "):
        read_cell_table(table, "cells.csv")
    with pytest.raises(CellTableError, match=r"^gone.csv: unreadable cell table: "):
        read_cell_table(tmp_path / "gone.csv", "gone.csv")


def test_a_shared_table_is_split_by_image_id_or_file_name(tmp_path):
    table = write(tmp_path / "cells.csv", "fov,x,y\nslide01,1,1\nslide02.ome.tif,2,2\nslide01.tif,3,3\nslide09,4,4\n"
                                          "slide09,5,5\n")
    cells, _ = read_cell_table(table, "cells.csv")
    names = {"slide01": "slide01", "slide01.tif": "slide01", "slide02": "slide02", "slide02.ome.tif": "slide02"}
    by_image, rejects = match_images(cells, names, "cells.csv")
    assert {image: [c.x for c in rows] for image, rows in by_image.items()} == {"slide01": [1.0, 3.0],
                                                                                 "slide02": [2.0]}
    assert [(r.source_path, r.reason) for r in rejects] == [
        ("cells.csv", "unknown image: 2 rows name image 'slide09', not found under ROOT")]


def test_a_table_without_an_image_column_fits_one_image_only(tmp_path):
    table = write(tmp_path / "cells.csv", "x,y\n1,1\n")
    cells, _ = read_cell_table(table, "cells.csv")
    by_image, rejects = match_images(cells, {"slide01": "slide01", "slide01.tif": "slide01"}, "cells.csv")
    assert list(by_image) == ["slide01"] and rejects == []
    with pytest.raises(CellTableError, match="no image column .* but 2 images under ROOT"):
        match_images(cells, {"slide01": "slide01", "slide02": "slide02"}, "cells.csv")


@pytest.mark.parametrize("x, y", [("X_centroid", "Y_centroid"), ("Location_Center_X", "Location_Center_Y"),
                                  ("Centroid X px", "Centroid Y px")])
def test_the_pixel_centres_of_mcmicro_cellprofiler_and_qupath_are_read(tmp_path, x, y):
    table = write(tmp_path / "cells.csv", f"CellID,{y},{x},Area\n1,10,20,55\n")
    cells, _ = read_cell_table(table, "cells.csv")
    assert [(c.x, c.y) for c in cells[None]] == [(20.0, 10.0)]


def test_qupath_classes_are_cell_types_and_its_micrometres_are_refused(tmp_path):
    table = write(tmp_path / "px.csv", "Image,Name,Class,Centroid X px,Centroid Y px\nslide01.tif,PathCellObject,"
                                       "Tumor,5,6\n")
    cells, _ = read_cell_table(table, "px.csv")
    assert [(c.x, c.y, c.cell_type) for c in cells["slide01.tif"]] == [(5.0, 6.0, "Tumor")]
    table = write(tmp_path / "um.csv", "Image,Class,Centroid X µm,Centroid Y µm\nslide01.tif,Tumor,2.5,3\n")
    with pytest.raises(CellTableError, match=r"^um.csv: cell centres are in micrometres"):
        read_cell_table(table, "um.csv")

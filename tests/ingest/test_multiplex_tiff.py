"""Multiplexed TIFF reading: channel names and axes from the file, regions equal to the pages
tifffile decodes whole, in every chunk layout we can write here."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tifffile

from ingest.multiplex_tiff import (
    ChannelIndex, MultiplexTiffError, Plane, RegionReader, read_channel_folder, read_channel_index,
)

NAMES = ["DAPI", "NeuN", "Iba1"]
BOXES = [(0, 0, 90, 100), (-7, 33, 50, 130), (31, 17, 73, 99), (85, 95, 120, 140), (200, 0, 230, 10)]


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 60000, (3, 100, 90), dtype=np.uint16)


def expected(image: np.ndarray, box) -> np.ndarray:
    """The box cut by hand: zeros, then the part inside the image."""
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0), image.dtype)
    h, w = image.shape
    for y in range(max(y0, 0), min(y1, h)):
        for x in range(max(x0, 0), min(x1, w)):
            out[y - y0, x - x0] = image[y, x]
    return out


LAYOUTS = {
    "zlib strips": dict(rowsperstrip=7, compression="zlib"),
    "zlib tiles": dict(tile=(32, 48), compression="zlib"),
    "predictor": dict(rowsperstrip=16, compression="zlib", predictor=True),
    "raw tiles": dict(tile=(32, 32)),
    # through imagecodecs: LZW is common in OME-TIFF exports
    "lzw strips": dict(rowsperstrip=7, compression="lzw"),
    "lzw tiles with predictor": dict(tile=(32, 48), compression="lzw", predictor=True),
    "zstd tiles": dict(tile=(32, 32), compression="zstd"),
    "raw big-endian strips (memmap)": dict(rowsperstrip=13, byteorder=">"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_regions_equal_the_decoded_pages(tmp_path, stack, layout):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "CYX", "Labels": NAMES}, **LAYOUTS[layout])
    index = read_channel_index(path, "img.tif")
    assert index.names == tuple(NAMES) and index.shape == (100, 90) and index.dtype == "uint16"
    with RegionReader(cache_bytes=4096) as reader:  # a small cache: evictions happen
        for c, plane in enumerate(index.planes):
            for box in BOXES:
                got = reader.read(plane, box)
                assert got.dtype == np.uint16 and got.dtype.isnative
                np.testing.assert_array_equal(got, expected(stack[c], box))


@pytest.mark.parametrize("compression", ["zlib", None])
@pytest.mark.parametrize("planar", ["separate", "contig"])
def test_samples_of_one_page_are_planes(tmp_path, stack, planar, compression):
    """An interleaved (YXS) or planar-separate (SYX) page, decoded by chunk or memory-mapped:
    each sample is a channel."""
    path = tmp_path / "samples.tif"
    data = stack if planar == "separate" else np.moveaxis(stack, 0, -1)
    tifffile.imwrite(path, data, photometric="rgb", planarconfig=planar, rowsperstrip=16, compression=compression)
    with RegionReader() as reader:
        for c in range(3):
            np.testing.assert_array_equal(reader.read(Plane(str(path), 0, c), BOXES[1]), expected(stack[c], BOXES[1]))


def test_names_from_ome_imagej_and_page_names(tmp_path, stack):
    ome, ij, pages = tmp_path / "a.ome.tif", tmp_path / "b.tif", tmp_path / "c.tif"
    tifffile.imwrite(ome, stack, ome=True, metadata={"axes": "CYX", "Channel": {"Name": NAMES},
                                                     "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5})
    tifffile.imwrite(ij, stack, imagej=True, metadata={"axes": "CYX", "Labels": NAMES[::-1]})
    with tifffile.TiffWriter(pages) as tif:
        for name, plane in zip(["x", "y", "z"], stack):
            tif.write(plane, photometric="minisblack", metadata=None, extratags=[(285, "s", 0, name, True)])
    a, b, c = (read_channel_index(p, p.name) for p in (ome, ij, pages))
    assert a.names == tuple(NAMES) and b.names == tuple(NAMES[::-1]) and c.names == ("x", "y", "z")
    assert a.pixel_spacing_mm == pytest.approx((0.5e-3, 0.25e-3))
    # select() follows the requested order, matching names case-insensitively.
    assert b.select(["dapi", "IBA1"]) == (b.planes[2], b.planes[0])
    with RegionReader() as reader:
        np.testing.assert_array_equal(reader.read(c.select(["Z"])[0], BOXES[0]), stack[2])


def test_real_mibi_file_names_every_page(shared_data):
    path = shared_data / "multiplex-tiff" / "mibi_fov8_22ch_uint16.tiff"
    index = read_channel_index(path, path.name)
    with tifffile.TiffFile(path) as tif:
        page_names = [p.tags["PageName"].value for p in tif.pages]
        assert tif.series[0].axes == "IYX"
    assert list(index.names) == page_names and len(index.names) == 22
    assert index.shape == (1024, 1024) and index.dtype == "uint16"
    assert index.pixel_spacing_mm == pytest.approx((0.000390625, 0.000390625))  # 25600 pixels per cm
    plane = index.select(["Ki67 (151)"])[0]
    with RegionReader() as reader:
        region = reader.read(plane, (1000, -4, 1030, 20))
    np.testing.assert_array_equal(region, expected(tifffile.imread(path, key=plane.page), (1000, -4, 1030, 20)))


def test_missing_channel_names_missing_and_available():
    index = ChannelIndex(("DAPI", "NeuN"), (Plane("f", 0), Plane("f", 1)), (4, 4), "uint16", None)
    with pytest.raises(MultiplexTiffError) as err:
        index.select(["NeuN", "Olig2", "Iba1"])
    assert str(err.value) == "missing channel: Olig2, Iba1 not in the file's channels (DAPI, NeuN)"


def test_a_marker_name_picks_its_mass_labelled_channel():
    names = ("HH3 (89)", "CD4 (143)", "CD4 (200)", "CD45 (169)", "CD8", "CD8 (158)")
    index = ChannelIndex(names, tuple(Plane("f", i) for i in range(len(names))), (4, 4), "uint16", None)
    assert [p.page for p in index.select(["cd45", "HH3", "CD45 (169)"])] == [3, 0, 3]
    assert [p.page for p in index.select(["CD8"])] == [4]  # an exact name comes first
    with pytest.raises(MultiplexTiffError) as err:
        index.select(["HH3", "CD4"])
    assert str(err.value) == "ambiguous channel: CD4 could be any of CD4 (143), CD4 (200); name one in full"
    with pytest.raises(MultiplexTiffError, match=r"^missing channel: CD3 not in"):
        index.select(["HH3", "CD3"])


def test_files_we_cannot_use_say_why(tmp_path, stack):
    unnamed, zstack, odd, dup = (tmp_path / f"{n}.tif" for n in ("unnamed", "zstack", "odd", "dup"))
    tifffile.imwrite(unnamed, stack, photometric="minisblack", metadata=None)
    tifffile.imwrite(zstack, np.zeros((2, 3, 8, 8), np.uint16), imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(odd, stack, imagej=True, metadata={"axes": "CYX", "Labels": NAMES})
    raw = odd.read_bytes()  # each page's Compression tag (259, SHORT, 1) set to 60000, which no codec has
    entry = struct.pack("<HHIH", 259, 3, 1, 1)
    assert raw.count(entry) == len(NAMES)
    odd.write_bytes(raw.replace(entry, struct.pack("<HHIH", 259, 3, 1, 60000)))
    tifffile.imwrite(dup, stack, imagej=True, metadata={"axes": "CYX", "Labels": ["DAPI", "dapi", "NeuN"]})
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    reasons = {}
    for path in (unnamed, zstack, odd, dup, tmp_path / "junk.tif"):
        with pytest.raises(MultiplexTiffError) as err:
            read_channel_index(path, path.name)
        reasons[path.stem] = str(err.value)
    assert reasons["unnamed"].startswith("no channel names: unnamed.tif")
    assert reasons["zstack"].startswith("unsupported axes: zstack.tif has axes ZCYX")
    assert reasons["odd"].startswith("undecodable TIFF: odd.tif") and "60000 is not a known COMPRESSION" in reasons["odd"]
    assert reasons["dup"].startswith("duplicate channel names: dup.tif")
    assert reasons["junk"].startswith("unreadable TIFF: junk.tif")


def test_channel_folder_names_channels_by_file(tmp_path, stack):
    folder = tmp_path / "slide"
    folder.mkdir()
    for name, plane in zip(NAMES, stack):
        tifffile.imwrite(folder / f"{name}.tif", plane, rowsperstrip=8, compression="zlib")
    index = read_channel_folder(folder, "slide")
    assert index.names == ("DAPI", "Iba1", "NeuN")  # file name order
    with RegionReader() as reader:
        np.testing.assert_array_equal(reader.read(index.select(["NeuN"])[0], BOXES[2]), expected(stack[1], BOXES[2]))
    tifffile.imwrite(folder / "Olig2.tif", stack[0, :50])
    with pytest.raises(MultiplexTiffError, match="channel files disagree"):
        read_channel_folder(folder, "slide")


def test_sampled_chunks_spread_over_the_page(tmp_path, stack):
    path = tmp_path / "tiles.tif"
    tifffile.imwrite(path, stack[0], tile=(16, 16), compression="zlib")
    plane = Plane(str(path), 0)
    with RegionReader() as reader:
        chunks = list(reader.sample_chunks(plane, 4))
        every = list(reader.sample_chunks(plane, 1000))
    assert len(chunks) == 4 and all(c.shape[0] <= 16 and c.shape[1] <= 16 for c in chunks)
    assert sum(c.size for c in every) == 100 * 90  # asking for more chunks than exist reads each once

"""Multiplexed TIFFs: channel names and axes read from the file, pixels read by region.

A multiplexed image is either one TIFF holding every channel, or a folder holding one single-channel
TIFF per channel (the file's stem names the channel). In one file the channel axis and the names
are read from the file, never assumed:

- axes from tifffile's `series[0].axes`: after dropping length-1 axes, exactly one axis besides Y
  and X must remain, and it must be a channel-like axis: C (channel), I (tifffile's "image sequence",
  e.g. one page per channel as MIBI writes), Q (unknown) or S (samples interleaved in one page).
  Z or T stacks are refused rather than mistaken for channels. A file whose pages each form their
  own 2-D series (pages written one by one with shape metadata) has one channel per series;
- names, first source that names every channel: OME-XML `<Channel Name=...>`, ImageJ `Labels`,
  each page's `PageName` tag. No names -> MultiplexTiffError, never a guessed order.

Pixels are read by region (`RegionReader.read`): uncompressed contiguous pages through a memory map
(only the rows under the region are read), chunked pages (strips or tiles, compressed with any
codec tifffile decodes through imagecodecs: deflate, LZW, zstd, JPEG, JPEG 2000, ...) by decoding
only the chunks under the region, with a small LRU cache so neighbouring regions do not decode a
chunk twice. A compression no codec knows is refused when the file is indexed, naming it.
"""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from tifffile import TIFF

from ingest.crops import Box
from shards import schema

TIFF_SUFFIXES = (".tif", ".tiff")
CHANNEL_AXES = "CIQS"
DTYPES = ("uint8", "uint16")
SAMPLE_ROWS = 256  # band height when sampling a memory-mapped page
_UNIT_MM = {"m": 1e3, "cm": 10.0, "mm": 1.0, "µm": 1e-3, "um": 1e-3, "micron": 1e-3, "nm": 1e-6}
_LABEL = re.compile(r"\s*\([^()]*\)\s*$")  # a channel name's trailing label: "HH3 (89)" -> "HH3"


class MultiplexTiffError(ValueError):
    """A multiplexed TIFF that cannot be used; str() is 'reason kind: detail'."""


_TIFF_ERRORS = (tifffile.TiffFileError, OSError, IndexError, KeyError, struct.error, ValueError)


@dataclass(frozen=True)
class Plane:
    """Where one channel's pixels are: a top-level page of a file, and a sample of that page."""

    file: str
    page: int
    sample: int = 0


@dataclass(frozen=True)
class ChannelIndex:
    """What a multiplexed image holds, read from its header(s) only."""

    names: tuple[str, ...]
    planes: tuple[Plane, ...]
    shape: tuple[int, int]  # (height, width)
    dtype: str
    pixel_spacing_mm: tuple[float, float] | None

    def select(self, wanted: Sequence[str]) -> tuple[Plane, ...]:
        """Planes of `wanted`, in that order. A name matches a channel's name case-insensitively,
        or, failing that, the one channel whose name is it plus a label in brackets: MIBI files
        name channels by marker and mass ("HH3 (89)"), which "HH3" picks. Raises naming the
        missing names and the available ones, or a name that more than one labelled channel has."""
        by_name = {name.casefold(): plane for name, plane in zip(self.names, self.planes)}
        by_marker: dict[str, list[str]] = {}
        for name in self.names:
            by_marker.setdefault(_LABEL.sub("", name).casefold(), []).append(name)

        def picked(name: str) -> str | None:
            """The casefolded name of the channel `name` picks; None when none does."""
            if name.casefold() in by_name:
                return name.casefold()
            found = by_marker.get(name.casefold(), [])
            if len(found) > 1:
                raise MultiplexTiffError(f"ambiguous channel: {name} could be any of {', '.join(found)}; "
                                         "name one in full")
            return found[0].casefold() if found else None

        keys = [picked(name) for name in wanted]
        if missing := [name for name, key in zip(wanted, keys) if key is None]:
            raise MultiplexTiffError(f"missing channel: {', '.join(missing)} not in the file's channels "
                                     f"({', '.join(self.names)})")
        return tuple(by_name[key] for key in keys)


def image_stem(path: Path) -> str:
    """'a/slide1.ome.tiff' -> 'slide1' (an image's id, and a per-channel file's channel name)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def image_files(path: Path) -> list[Path]:
    """The file of a multi-channel image, or a per-channel folder's TIFFs in name order."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES)


def files_fingerprint(path: Path) -> str:
    """schema.fingerprint of an image's bytes: the file, or a folder's channel files concatenated
    in name order."""
    digest = schema.new_fingerprint()
    for file in image_files(path):
        with open(file, "rb") as fh:
            while block := fh.read(8 << 20):
                digest.update(block)
    return digest.hexdigest()


def _check_page(page, name: str) -> None:
    """Refuse what the region reader cannot decode here, before any worker tries."""
    if page.imagedepth > 1:
        raise MultiplexTiffError(f"unsupported TIFF: {name} holds volumetric tiles")
    if page.compression != 1:
        try:
            TIFF.DECOMPRESSORS[page.compression]
            if page.predictor > 1:
                TIFF.UNPREDICTORS[page.predictor]
        except KeyError as exc:
            raise MultiplexTiffError(f"undecodable TIFF: {name}: {exc.args[0]}") from None
    if str(page.dtype) not in DTYPES:
        raise MultiplexTiffError(f"unsupported dtype: {name} holds {page.dtype}, expected uint8 or uint16")


def _ome_channel_names(tif: tifffile.TiffFile) -> list[str | None]:
    root = ET.fromstring(tif.ome_metadata)
    pixels = root.find("{*}Image/{*}Pixels")
    return [] if pixels is None else [ch.get("Name") for ch in pixels.findall("{*}Channel")]


def _spacing_mm(tif: tifffile.TiffFile, page) -> tuple[float, float] | None:
    """(row, col) pixel spacing in mm: OME PhysicalSizeY/X, else the resolution tags (ImageJ's
    'unit' when ResolutionUnit says none), else None."""
    if tif.is_ome:
        pixels = ET.fromstring(tif.ome_metadata).find("{*}Image/{*}Pixels")
        if pixels is not None and pixels.get("PhysicalSizeX") and pixels.get("PhysicalSizeY"):
            unit_x = _UNIT_MM.get(pixels.get("PhysicalSizeXUnit", "µm"))
            unit_y = _UNIT_MM.get(pixels.get("PhysicalSizeYUnit", "µm"))
            if unit_x and unit_y:
                return float(pixels.get("PhysicalSizeY")) * unit_y, float(pixels.get("PhysicalSizeX")) * unit_x
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = {2: 25.4, 3: 10.0}.get(int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2)
    if unit is None and tif.is_imagej:
        unit = _UNIT_MM.get(str(tif.imagej_metadata.get("unit", "")))
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if unit is None or not (xn and xd and yn and yd):
        return None
    return unit * yd / yn, unit * xd / xn


def read_channel_index(path: Path, name: str) -> ChannelIndex:
    """One TIFF holding every channel -> its channel names, planes, shape and dtype. `name` is the
    file as rejects should name it."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise MultiplexTiffError(f"unreadable TIFF: {name} holds no image")
            index = _channel_index(tif, path, name)
    except MultiplexTiffError:
        raise
    except _TIFF_ERRORS as exc:  # tifffile raises many kinds on a damaged file
        raise MultiplexTiffError(f"unreadable TIFF: {name}: {type(exc).__name__}: {exc}") from None
    _check_unique(index.names, name)
    return index


def _channel_index(tif: tifffile.TiffFile, path: Path, name: str) -> ChannelIndex:
    series = tif.series[0]
    axes = "".join(ax for ax, n in zip(series.axes, series.shape) if n > 1)
    pages = [p for p in series.pages if p is not None]
    if axes == "YX" and len(tif.series) > 1 and not (tif.is_ome or tif.is_imagej):
        # One page per series: channels are the series that match the first one.
        pages = [s.pages[0] for s in tif.series if s.shape == series.shape and s.dtype == series.dtype]
        axes = "IYX" if len(pages) > 1 else "YX"
    extra = axes.replace("Y", "").replace("X", "")
    if len(extra) > 1 or (extra and extra not in CHANNEL_AXES) or not axes.endswith(("YX", "YXS")):
        raise MultiplexTiffError(f"unsupported axes: {name} has axes {series.axes} {series.shape}; "
                                 f"expected one channel axis ({', '.join(CHANNEL_AXES)}) beside Y and X")
    if any(p.parent is not tif or not isinstance(p.index, int) for p in pages):
        raise MultiplexTiffError(f"unsupported TIFF: {name} keeps its channels in other files or sub-IFDs")
    pages = [p.aspage() for p in pages]
    for page in pages:
        _check_page(page, name)
    if extra == "S":
        planes = [Plane(str(path), pages[0].index, s) for s in range(pages[0].samplesperpixel)]
    else:
        planes = [Plane(str(path), p.index) for p in pages]
    candidates = []
    if tif.is_ome:
        candidates.append(_ome_channel_names(tif))
    if tif.is_imagej:
        candidates.append(list(tif.imagej_metadata.get("Labels") or []))
    if extra != "S":
        candidates.append([p.tags["PageName"].value if "PageName" in p.tags else None for p in pages])
    names = next((c for c in candidates if len(c) == len(planes) and all(c)), None)
    if names is None:
        raise MultiplexTiffError(f"no channel names: {name} names its {len(planes)} channels neither in "
                                 "OME-XML, ImageJ Labels nor PageName tags")
    return ChannelIndex(tuple(str(n).strip() for n in names), tuple(planes), page_shape(pages[0]),
                        str(pages[0].dtype), _spacing_mm(tif, pages[0]))


def read_channel_folder(folder: Path, name: str) -> ChannelIndex:
    """A folder of single-channel TIFFs, one per channel, each file's stem its channel name."""
    files = image_files(folder)
    if not files:
        raise MultiplexTiffError(f"no channel files: {name} holds no .tif/.tiff files")
    planes, shapes, dtypes = [], set(), set()
    for path in files:
        index = read_channel_index_single(path, f"{name}/{path.name}")
        planes.append(index.planes[0])
        shapes.add(index.shape)
        dtypes.add(index.dtype)
    if len(shapes) > 1 or len(dtypes) > 1:
        raise MultiplexTiffError(f"channel files disagree: {name} holds shapes {sorted(shapes)} "
                                 f"dtypes {sorted(dtypes)}")
    names = tuple(image_stem(p) for p in files)
    _check_unique(names, name)
    with tifffile.TiffFile(files[0]) as tif:
        spacing = _spacing_mm(tif, tif.pages[planes[0].page])
    return ChannelIndex(names, tuple(planes), shapes.pop(), dtypes.pop(), spacing)


def read_channel_index_single(path: Path, name: str) -> ChannelIndex:
    """A per-channel file: one 2-D plane, named by its file stem."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise MultiplexTiffError(f"unreadable TIFF: {name} holds no image")
            series = tif.series[0]
            axes = "".join(ax for ax, n in zip(series.axes, series.shape) if n > 1)
            if axes != "YX":
                raise MultiplexTiffError(f"unsupported axes: {name} has axes {series.axes} {series.shape}; "
                                         "a per-channel file must hold one 2-D plane")
            page = series.pages[0].aspage()
            _check_page(page, name)
            return ChannelIndex((image_stem(path),), (Plane(str(path), page.index),), page_shape(page),
                                str(page.dtype), None)
    except MultiplexTiffError:
        raise
    except _TIFF_ERRORS as exc:
        raise MultiplexTiffError(f"unreadable TIFF: {name}: {type(exc).__name__}: {exc}") from None


def _check_unique(names: Sequence[str], name: str) -> None:
    folded = [n.casefold() for n in names]
    twice = sorted({n for n in names if folded.count(n.casefold()) > 1})
    if twice:
        raise MultiplexTiffError(f"duplicate channel names: {name} names {', '.join(twice)} more than once")


class RegionReader:
    """Reads (H, W) regions of planes from open TIFFs; one per worker and image, closed after.

    `cache_bytes` bounds the decoded chunks kept (LRU): enough for the chunks under a few regions.
    """

    def __init__(self, cache_bytes: int = 64 << 20):
        self._files: dict[str, tifffile.TiffFile] = {}
        self._pages: dict[tuple[str, int], object] = {}
        self._maps: dict[tuple[str, int], np.ndarray] = {}
        self._chunks: OrderedDict[tuple[str, int, int], tuple[np.ndarray, int, int]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._maps.clear()
        self._chunks.clear()
        for tif in self._files.values():
            tif.close()
        self._files.clear()

    def _page(self, plane: Plane):
        key = (plane.file, plane.page)
        if key not in self._pages:
            if plane.file not in self._files:
                self._files[plane.file] = tifffile.TiffFile(plane.file)
            page = self._files[plane.file].pages[plane.page].aspage()
            self._pages[key] = page
            if page.is_memmappable:
                mapped = tifffile.memmap(plane.file, page=plane.page, mode="r")
                # (S, H, W) for planar-separate samples: a view as (H, W, S), nothing read
                self._maps[key] = np.moveaxis(mapped, 0, -1) if page.planarconfig == 2 and mapped.ndim == 3 else mapped
        return self._pages[key]

    def shape(self, plane: Plane) -> tuple[int, int]:
        return page_shape(self._page(plane))

    def read(self, plane: Plane, box: Box) -> np.ndarray:
        """Pixels of `plane` under `box` (x0, y0, x1, y1), zero where the box leaves the image,
        in native byte order."""
        page = self._page(plane)
        x0, y0, x1, y1 = box
        h, w = page_shape(page)
        out = np.zeros((y1 - y0, x1 - x0), dtype=page.dtype.newbyteorder("="))
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx0 >= sx1 or sy0 >= sy1:
            return out
        mapped = self._maps.get((plane.file, plane.page))
        if mapped is not None:
            region = mapped[sy0:sy1, sx0:sx1]
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = region[..., plane.sample] if region.ndim == 3 else region
            return out
        sample = 0 if page.planarconfig == 2 else plane.sample  # a separate plane's chunks hold one sample
        for index in self._chunk_indices(page, plane.sample, (sx0, sy0, sx1, sy1)):
            segment, cy, cx = self._chunk(plane, page, index)
            chunk = segment[:, :, sample]
            iy0, iy1 = max(sy0, cy), min(sy1, cy + chunk.shape[0])
            ix0, ix1 = max(sx0, cx), min(sx1, cx + chunk.shape[1])
            if iy0 < iy1 and ix0 < ix1:
                out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = chunk[iy0 - cy : iy1 - cy, ix0 - cx : ix1 - cx]
        return out

    def sample_chunks(self, plane: Plane, count: int) -> Iterator[np.ndarray]:
        """Up to `count` whole chunks (strips or tiles) of the plane, spread evenly over it: the
        pixels a global statistic (the nuclear Otsu threshold) is estimated from without reading a
        whole slide. A memory-mapped page is sampled in bands of SAMPLE_ROWS rows instead."""
        page = self._page(plane)
        h, w = page_shape(page)
        if (plane.file, plane.page) in self._maps:
            th, tw, ny, nx = min(h, SAMPLE_ROWS), w, -(-h // min(h, SAMPLE_ROWS)), 1
        else:
            th, tw, ny, nx = _chunk_grid(page)
        total = ny * nx
        picks = min(count, total)
        for i in sorted({k * total // picks for k in range(picks)}):
            ty, tx = divmod(i, nx)
            yield self.read(plane, (tx * tw, ty * th, min(w, (tx + 1) * tw), min(h, (ty + 1) * th)))

    def _chunk_indices(self, page, sample: int, box: Box) -> list[int]:
        th, tw, ny, nx = _chunk_grid(page)
        planes = page.samplesperpixel if page.planarconfig == 2 else 1
        if len(page.dataoffsets) != planes * ny * nx:
            raise MultiplexTiffError(f"unsupported TIFF: {len(page.dataoffsets)} chunks where "
                                     f"{planes}x{ny}x{nx} were expected")
        base = sample * ny * nx if page.planarconfig == 2 else 0
        x0, y0, x1, y1 = box
        return [base + ty * nx + tx for ty in range(y0 // th, (y1 - 1) // th + 1)
                for tx in range(x0 // tw, (x1 - 1) // tw + 1)]

    def _chunk(self, plane: Plane, page, index: int) -> tuple[np.ndarray, int, int]:
        """Decoded chunk `index` of the page as (rows, cols, samples), and its origin (y, x)."""
        key = (plane.file, plane.page, index)
        if key in self._chunks:
            self._chunks.move_to_end(key)
            return self._chunks[key]
        fh = self._files[plane.file].filehandle
        fh.seek(page.dataoffsets[index])
        segment, indices, _ = page.decode(fh.read(page.databytecounts[index]), index)
        chunk = segment.reshape(segment.shape[-3:]).astype(segment.dtype.newbyteorder("="), copy=False)
        entry = (chunk, int(indices[2]), int(indices[3]))
        self._chunks[key] = entry
        self._cached += chunk.nbytes
        while self._cached > self._cache_bytes and len(self._chunks) > 1:
            _, (old, _, _) = self._chunks.popitem(last=False)
            self._cached -= old.nbytes
        return entry


def page_shape(page) -> tuple[int, int]:
    """(height, width) of a page, whatever its sample layout (page.shape leads with S when planar)."""
    return int(page.imagelength), int(page.imagewidth)


def _chunk_grid(page) -> tuple[int, int, int, int]:
    """(chunk rows, chunk cols, chunks down, chunks across) of a stripped or tiled page."""
    h, w = page_shape(page)
    if page.is_tiled:
        th, tw = page.tilelength, page.tilewidth
    else:
        th, tw = min(page.rowsperstrip or h, h), w
    return th, tw, -(-h // th), -(-w // tw)


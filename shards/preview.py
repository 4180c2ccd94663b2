"""`shards preview`: a contact sheet PNG of a few samples, to look at what a shard set holds.

Samples are picked from the manifest with a seeded generator (the same seed shows the same
samples) and read back from the shards themselves, so the sheet shows what training will read,
not what ingest meant to write. Display windowing happens here only; the shards stay untouched.
"""

from __future__ import annotations

import math
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shards import codecs, schema, storage
from shards.card import shard_records
from shards.atomic_files import atomic_write_bytes

TILE = 256  # pixels per tile side
CAPTION_HEIGHT = 34  # two lines of FONT_SCALE text under each tile
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.4
MASK_COLOUR = (0, 255, 255)  # BGR yellow: visible on grey radiographs and most photographs
WINDOW_PERCENTILES = (0.5, 99.5)
MAX_LABEL_CHARS = 14  # longer label values (free text, lists) would not fit a caption
CAPTION_LABELS = ("pathology", "class4")  # shown first where a source has them


def choose_rows(root: Path, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """n manifest rows of `split`, seeded, in manifest order (so shards are read front to back)."""
    table = storage.read_parquet(storage.join(root, schema.MANIFEST_FILE), columns=["key", "shard", "split"])
    rows = [row for row in table.to_pylist() if row["split"] == split]
    if not rows:
        raise ValueError(f"no {split} samples in {storage.join(root, schema.MANIFEST_FILE)}")
    picked = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i] for i in sorted(picked)]


def read_members(root: Path, card: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} for the rows' samples, each shard opened once. Only shards the
    card lists are opened: a manifest row cannot point the reader outside the set."""
    listed = {record["path"] for record in shard_records(card)}
    wanted: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["shard"] not in listed:
            raise ValueError(f"manifest names shard {row['shard']!r}, which dataset.json does not list")
        wanted[row["shard"]].add(row["key"])
    found: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard, keys in wanted.items():
        with storage.open_input(storage.join(root, shard)) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if key in keys and ext in schema.ALL_MEMBERS and info.isfile():
                    found[key][ext] = tar.extractfile(info).read()
        missing = sorted(keys - set(found))
        if missing:
            raise ValueError(f"{shard} lacks {missing} named by the manifest (run `shards verify`)")
    return found


def display_image(ext: str, pixels: np.ndarray, channel: int, key: str) -> np.ndarray:
    """Decoded pixels -> (H, W, 3) uint8 BGR for drawing. 16-bit is windowed to its own
    percentiles (a 12-bit radiograph in a 16-bit PNG is near-black shown raw); RGB is shown as
    is; other multi-channel images show one channel."""
    if ext == schema.PIXELS_PNG and pixels.ndim == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if pixels.ndim == 3:
        if not 0 <= channel < pixels.shape[2]:
            raise ValueError(f"{key} has {pixels.shape[2]} channels; channel {channel} does not exist")
        pixels = pixels[:, :, channel]
    if pixels.dtype == np.uint16:
        low, high = np.percentile(pixels, WINDOW_PERCENTILES)
        scaled = (pixels.astype(np.float32) - low) * (255.0 / max(high - low, 1.0))
        pixels = np.clip(scaled, 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_GRAY2BGR)


def _fit_text(text: str, width: int) -> str:
    """Shorten `text` until it fits `width` pixels; Hershey fonts draw ASCII only."""
    text = text.encode("ascii", "replace").decode()
    while text and cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0] > width:
        text = text[:-1]
    return text


def caption_lines(meta: schema.SampleMeta) -> tuple[str, str]:
    """(key prefix, two short label values / crop kind): enough to tell tiles apart and spot a
    mislabelled sample, not a full record (the manifest has that). Text labels read alone
    ("MALIGNANT"); numbers need their name ("birads=4"), so text comes first."""
    def rank(item):
        name, value = item
        preferred = CAPTION_LABELS.index(name) if name in CAPTION_LABELS else len(CAPTION_LABELS)
        return preferred, not isinstance(value, str), name

    shown = [value if isinstance(value, str) else f"{name}={value}"
             for name, value in sorted(meta.labels.items(), key=rank)
             if isinstance(value, (str, int, float, bool)) and len(str(value)) <= MAX_LABEL_CHARS]
    return meta.key[:12], " / ".join(shown[:2] + [meta.crop_kind])


def render_tile(members: dict[str, bytes], *, tile: int, channel: int) -> np.ndarray:
    """One sample -> (tile + CAPTION_HEIGHT, tile, 3) uint8 BGR: the image fitted into the square,
    the mask outline over it, the caption below."""
    ext = next((e for e in schema.PIXEL_MEMBERS if e in members), None)
    if ext is None or schema.META_JSON not in members:
        raise ValueError(f"a sample lacks its pixel or json member: {sorted(members)} (run `shards verify`)")
    meta = schema.SampleMeta.from_json_bytes(members[schema.META_JSON])
    image = display_image(ext, codecs.decode_pixels(ext, members[ext]), channel, meta.key)
    height, width = image.shape[:2]
    scale = tile / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # INTER_AREA averages when shrinking; NEAREST keeps small crops' pixels honest when enlarging
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    out = np.zeros((tile + CAPTION_HEIGHT, tile, 3), np.uint8)
    x0, y0 = (tile - size[0]) // 2, (tile - size[1]) // 2
    out[y0:y0 + size[1], x0:x0 + size[0]] = image
    if schema.MASK_PNG in members:
        mask = cv2.resize(codecs.decode_mask(members[schema.MASK_PNG]), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, MASK_COLOUR, thickness=max(1, tile // 128), offset=(x0, y0))
    out[tile:] = 40  # dark grey caption bar separates the rows
    for i, line in enumerate(caption_lines(meta)):
        cv2.putText(out, _fit_text(line, tile - 6), (3, tile + 13 + 15 * i), FONT, FONT_SCALE,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contact_sheet(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Tiles in reading order on a (rows * tile height, cols * tile width, 3) sheet."""
    tile_h, tile_w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / cols)
    sheet = np.zeros((rows * tile_h, cols * tile_w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * tile_h:(r + 1) * tile_h, c * tile_w:(c + 1) * tile_w] = tile
    return sheet


def run(root: Path, card: dict[str, Any], *, split: str = "train", n: int = 16, out: Path | None = None,
        seed: int = 0, cols: int | None = None, channel: int = 0, tile: int = TILE, stdout=None) -> int:
    """Write the sheet atomically (default ROOT/preview.png) and print its path."""
    rows = choose_rows(root, split, n, seed)
    members = read_members(root, card, rows)
    tiles = [render_tile(members[row["key"]], tile=tile, channel=channel) for row in rows]
    sheet = contact_sheet(tiles, cols or math.ceil(math.sqrt(len(tiles))))
    ok, png = cv2.imencode(".png", sheet)
    if not ok:
        raise ValueError("OpenCV could not encode the contact sheet")
    if out is None:  # beside the set, or here when the set is in an object store
        out = "preview.png" if storage.is_uri(root) else Path(root) / "preview.png"
    out = Path(out)
    atomic_write_bytes(out, png.tobytes())
    print(out, file=stdout)
    return 0

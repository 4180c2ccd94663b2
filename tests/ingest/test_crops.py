import numpy as np
import pytest

from ingest.crops import mask_bbox


def _argwhere_box(mask: np.ndarray):
    """The tight box by the definition: extremes of the non-zero pixels' coordinates."""
    points = np.argwhere(mask != 0)
    if len(points) == 0:
        return None
    (y0, x0), (y1, x1) = points.min(axis=0), points.max(axis=0)
    return int(x0), int(y0), int(x1) + 1, int(y1) + 1


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.uint16, np.int16, np.float32])
def test_mask_bbox_matches_the_definition(dtype):
    rng = np.random.default_rng(3)
    for _ in range(20):
        h, w = rng.integers(1, 60, size=2)
        mask = np.zeros((h, w), dtype)
        for _ in range(rng.integers(0, 4)):  # a few scattered blobs, odd widths included
            y, x = rng.integers(0, h), rng.integers(0, w)
            value = -3 if np.issubdtype(dtype, np.signedinteger) else 1
            mask[y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = value
        assert mask_bbox(mask) == _argwhere_box(mask)


def test_mask_bbox_of_a_view_and_an_empty_mask():
    mask = np.zeros((40, 50), np.uint8)
    mask[7, 9] = mask[30, 41] = 255
    assert mask_bbox(mask[:, ::2]) == _argwhere_box(mask[:, ::2])  # not contiguous
    assert mask_bbox(mask) == (9, 7, 42, 31)
    assert mask_bbox(np.zeros((5, 5), np.uint8)) is None

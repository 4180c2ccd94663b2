"""shards/sample_stages.py: a bad sample's error as it crosses processes."""

from __future__ import annotations

import pickle

from shards.sample_stages import SampleError


def test_a_sample_error_pickles_as_its_shard_key_and_cause():
    """A Ray Train worker's exception reaches the driver pickled; built from its message alone
    (BaseException's default) it raised TypeError there, and the driver saw Ray's traceback."""
    error = SampleError("train/shard-000003.tar", "p0007-l-cc-lesion1", ValueError("PNG member does not decode"))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is SampleError and str(again) == str(error)
    assert (again.shard, again.key, str(again.cause)) == ("train/shard-000003.tar", "p0007-l-cc-lesion1",
                                                          "PNG member does not decode")
    whole = pickle.loads(pickle.dumps(SampleError("val/shard-000000.tar", None, "truncated tar")))
    assert str(whole) == "val/shard-000000.tar: truncated tar" and whole.key is None

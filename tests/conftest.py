"""Shared test settings: where the real sample files are, and the environment every test needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (CI clones main with shared/ beside it); overridable.
SHARED_DATA = Path(os.environ.get("MEDSHARDS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample files; tests that need them skip cleanly when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample files not found at {SHARED_DATA} (set MEDSHARDS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def archive_exports(tmp_path_factory) -> tuple[Path, Path]:
    """A generated 20-patient DICOM archive and its first export, the first 8 patients' folders:
    (first, whole), the growing archive that separate ingest jobs split differently."""
    import shutil

    from ingest.sample_data.dicom_archive import make_dicom_archive

    tmp = tmp_path_factory.mktemp("archive")
    whole = make_dicom_archive(tmp / "whole", images=40, patients=20, studies_per_patient=1, shape=(64, 48),
                               quirks=False).root
    for folder in sorted(whole.iterdir())[:8]:
        shutil.copytree(folder, tmp / "first" / folder.name)
    return tmp / "first", whole


class S3Endpoint:
    """A real S3 HTTP endpoint on 127.0.0.1 with one bucket: `uri(key)` names an object or prefix
    with the endpoint in its query, as a user names an on-premises store; `fs` is pyarrow's
    client for it (to upload fixtures)."""

    bucket = "medshards-test"

    def __init__(self, host: str, port: int):
        import pyarrow.fs

        self.query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
        self.fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{self.bucket}?{self.query}&allow_bucket_creation=true")
        self.fs.create_dir(self.bucket)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}?{self.query}"

    def upload(self, folder: Path, key: str) -> str:
        import pyarrow.fs

        pyarrow.fs.copy_files(str(folder), f"{self.bucket}/{key}", destination_filesystem=self.fs)
        return self.uri(key)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server (spoken to by pyarrow's own AWS client), dummy credentials in the
    environment while it runs; skips where moto (the test extra) is not installed."""
    moto_server = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(AWS_ACCESS_KEY_ID="medshards", AWS_SECRET_ACCESS_KEY="medshards", AWS_EC2_METADATA_DISABLED="true")
    try:
        yield S3Endpoint(*server.get_host_and_port())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()

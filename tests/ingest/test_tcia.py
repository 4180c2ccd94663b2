from ingest import tcia


def test_series_index_reads_windows_paths_and_both_header_spellings(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metadata.csv").write_text(
        '"Series_UID","Series_Description","File_Location"\r\n'
        '"1.2.3","ROI mask images",".\\CBIS-DDSM\\Mass-Training_P_00001_LEFT_CC_1\\07-21-2016-DDSM-NA-1\\1.000000-ROI mask images-2"\r\n'
    )
    (tmp_path / "metadata.csv").write_text(
        "Series UID,Series Description,File Location\n4.5.6,NA,.\\CMMD\\D1-0001\\07-18-2010-NA-NA-1\\1.000000-NA-2\n"
    )
    index = tcia.read_series_index(tmp_path)
    assert index["1.2.3"].folder == tmp_path / "old" / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC_1" / "07-21-2016-DDSM-NA-1" / "1.000000-ROI mask images-2"
    assert index["1.2.3"].description == "ROI mask images"
    assert index["4.5.6"].folder == tmp_path / "CMMD" / "D1-0001" / "07-18-2010-NA-NA-1" / "1.000000-NA-2"


def test_real_tcia_metadata_parses(shared_data, tmp_path):
    import shutil

    shutil.copy(shared_data / "cbis-ddsm" / "tcia_metadata_roi_series.csv", tmp_path / "metadata.csv")
    index = tcia.read_series_index(tmp_path)
    assert len(index) == 3669
    assert all("CBIS-DDSM" in str(s.folder) and "\\" not in str(s.folder) for s in index.values())

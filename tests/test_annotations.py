"""Annotation readers and writers: formats, round trips, and errors that name file and line."""

from __future__ import annotations

import pytest

from vlkd.data.annotations import (
    VideoSample,
    read_annotations,
    read_class_names,
    read_csv_list,
    read_video_list,
    write_class_names,
    write_csv_list,
    write_video_list,
)
from vlkd.errors import ConfigError, MissingFileError, VlkdError
from vlkd.paths import asset_path

SAMPLES = [
    VideoSample("val/abc_000010_000020.mp4", 0),
    VideoSample("folder with spaces/clip 1.avi", 12),
    VideoSample("odd, name/'quote\".webm", 3),
]
# Real SSv2 names: commas and an apostrophe must survive a round trip.
NAMES = [
    "Removing something, revealing something behind",
    "Putting something that can't roll onto a slanted surface, so it stays where it is",
    'a "quoted" name',
    "abseiling",
]


def test_video_list_round_trip(tmp_path):
    path = write_video_list(SAMPLES, tmp_path / "sub" / "list.txt")
    assert path.read_text().splitlines()[1] == "folder with spaces/clip 1.avi 12"
    assert read_video_list(path) == SAMPLES


def test_csv_list_round_trip(tmp_path):
    path = write_csv_list(SAMPLES, tmp_path / "list.csv")
    assert path.read_text().splitlines()[0] == "path,label"
    assert read_csv_list(path) == SAMPLES


def test_class_names_round_trip(tmp_path):
    path = write_class_names(NAMES, tmp_path / "labels.csv")
    assert path.read_text().splitlines()[:2] == ["id,name", '0,"Removing something, revealing something behind"']
    assert read_class_names(path) == NAMES


def test_read_annotations_dispatches_on_suffix(tmp_path):
    text_path = write_video_list(SAMPLES, tmp_path / "list.txt")
    csv_path = write_csv_list(SAMPLES, tmp_path / "list.CSV")
    assert read_annotations(text_path) == SAMPLES
    assert read_annotations(csv_path) == SAMPLES
    # The same CSV content under a .txt name is read as a text list (and fails on the header line).
    (tmp_path / "csv_as.txt").write_text(csv_path.read_text())
    with pytest.raises(ConfigError, match="line 1"):
        read_annotations(tmp_path / "csv_as.txt")


def test_video_list_tolerates_crlf_bom_blank_lines_and_tabs(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbfa.mp4 1\r\n\r\n  b c.mp4\t2  \r\n\n\nd.mp4 3")
    assert read_video_list(path) == [VideoSample("a.mp4", 1), VideoSample("b c.mp4", 2), VideoSample("d.mp4", 3)]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("just_a_path.mp4", "expected `<relative/path> <label_id>`"),
        ("clip.mp4 -1", "non-negative integer"),
        ("clip.mp4 1.0", "non-negative integer"),
        ("clip.mp4 one", "non-negative integer"),
    ],
)
def test_video_list_bad_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "broken.txt"
    path.write_text(f"a.mp4 0\n\n{bad_line}\n")
    with pytest.raises(ConfigError) as error:
        read_video_list(path)
    assert "broken.txt, line 3" in str(error.value)
    assert message in str(error.value)


def test_csv_list_accepts_alias_header_and_ignores_extra_columns(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("Video , duration, label\nx/a.mp4,3.5,2\n\ny.mp4,1.0,0\n")
    assert read_csv_list(path) == [VideoSample("x/a.mp4", 2), VideoSample("y.mp4", 0)]


def test_csv_list_without_label_column_is_rejected(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("path,class\na.mp4,2\n")
    with pytest.raises(ConfigError, match="'label'"):
        read_csv_list(path)


def test_class_names_are_ordered_by_id_and_stripped(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,name\n2, c \n0,a\n1,b\n")
    assert read_class_names(path) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("0,a\n0,b\n", "class id 0 appears twice"),
        ("0,a\n2,b\n", "missing [1]"),
        ("1,a\n2,b\n", "missing [0]"),
        ("0,a\n1,a\n", "already used on line 2"),
        ("0,a\n1,\n", "empty name"),
        ("0,a\nx,b\n", "class id must be a non-negative integer"),
        ("0,a\n1,Removing something, revealing\n", "expected 2 fields"),
        ("", "no classes listed"),
    ],
)
def test_bad_class_name_files_are_rejected(tmp_path, body, message):
    path = tmp_path / "labels.csv"
    path.write_text("id,name\n" + body)
    with pytest.raises(ConfigError) as error:
        read_class_names(path)
    assert message in str(error.value)
    assert "labels.csv" in str(error.value)


def test_class_names_need_a_header(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("0,a\n1,b\n")
    with pytest.raises(ConfigError, match="lacks a 'id' column"):
        read_class_names(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="expected a header row `id,name`"):
        read_class_names(path)


@pytest.mark.parametrize("reader", [read_video_list, read_csv_list, read_class_names, read_annotations])
def test_missing_file_raises_missing_file_error(tmp_path, reader):
    with pytest.raises(MissingFileError) as error:
        reader(tmp_path / "absent.txt")
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, VlkdError)
    assert "absent.txt" in str(error.value) and "check the path" in str(error.value)
    with pytest.raises(MissingFileError, match="point at the file"):
        reader(tmp_path)


@pytest.mark.parametrize(
    "sample", [VideoSample(" lead.mp4", 0), VideoSample("a\nb.mp4", 0), VideoSample("", 0), VideoSample("a.mp4", -1)]
)
def test_writers_refuse_samples_that_would_not_read_back(tmp_path, sample):
    with pytest.raises(ConfigError):
        write_video_list([sample], tmp_path / "list.txt")
    with pytest.raises(ConfigError):
        write_csv_list([sample], tmp_path / "list.csv")


@pytest.mark.parametrize("names", [["a", "a"], ["a", " b"], ["a", ""]])
def test_write_class_names_refuses_unreadable_names(tmp_path, names):
    with pytest.raises(ConfigError):
        write_class_names(names, tmp_path / "labels.csv")


def test_real_label_files_with_crlf_and_quoted_commas():
    # ssv2 base labels: CRLF endings and quoted names containing commas.
    names = read_class_names(asset_path("base2novel", "labels", "ssv2_174_base_labels.csv"))
    assert len(names) == 87
    assert names[5] == "Removing something, revealing something behind"
    assert not any("\r" in name or '"' in name for name in names)
    # The fully quoted full list: 12 names carry commas (4 base + 8 novel, counted from the raw files).
    full = read_class_names(asset_path("base2novel", "labels", "ssv2_labels.csv"))
    assert len(full) == 174 and sum("," in name for name in full) == 12

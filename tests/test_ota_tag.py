"""The Blynk tag and package versions: what Blynk's raw scan reads, and what it cannot carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.ota.tag import MAGIC, BlynkTag, TagError, check_value, find_tags, read_tag
from agent.ota.versions import VersionError, is_newer, package_version

pytestmark = pytest.mark.unit


def test_encoding_is_blynks_layout() -> None:
    tag = BlynkTag("1.2.0", "TMPL87mTr-1PZ", "Mar 05 2024 18:29:27")
    assert tag.encode() == (b"blnkinf\0mcu\x001.2.0\0fw-type\0TMPL87mTr-1PZ\0build\0Mar 05 2024 18:29:27\0\0")
    assert BlynkTag.decode(tag.encode()) == (tag, len(tag.encode()))


@pytest.mark.parametrize(
    "value, bad",
    [
        ("1.0.0+abc", "'+'"),
        ("a/b", "'/'"),
        ("", "empty"),
        ("   ", "empty"),
        ("v1;rm", "';'"),
        ("x" * 65, "longer"),
        ("naïve", "'ï'"),
    ],
)
def test_values_blynk_cannot_carry_are_refused(value: str, bad: str) -> None:
    with pytest.raises(TagError, match="tag mcu") as err:
        check_value("mcu", value)
    assert bad in str(err.value)


def test_allowed_punctuation_passes() -> None:
    assert check_value("build", "Mar 05 2024 18:29:27 (ci, run_7) - x.y") == "Mar 05 2024 18:29:27 (ci, run_7) - x.y"


def test_raw_scan_finds_the_tag_anywhere_even_across_chunks(tmp_path: Path) -> None:
    tag = BlynkTag("2.0.0rc1", "TMPLx", "Jan 01 2027 00:00:00")
    for offset in (0, 1000, 4095, 4096 - len(MAGIC) + 3, 9000):
        path = tmp_path / f"f{offset}"
        path.write_bytes(b"\xff" * offset + tag.encode() + b"\x00tail")
        assert [(o, t) for o, t in find_tags(path, chunk=4096)] == [(offset, tag)]
        assert read_tag(path) == tag


def test_missing_cut_duplicate_and_conflicting_tags(tmp_path: Path) -> None:
    a = BlynkTag("1.0.0", "T", "B")
    b = BlynkTag("1.0.1", "T", "B")
    cases = {
        "none": (b"no tag here", "no Blynk tag"),
        "cut": (a.encode()[:-5], "cut off"),
        "lacks": (MAGIC + b"mcu\x001.0\x00\x00", "lacks fw-type, build"),
        "two": (a.encode() + b"..." + b.encode(), "2 different Blynk tags"),
        "garbage": (MAGIC + b"mcu\x00" + b"z" * 200, "not ended by NUL"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(TagError, match=message):
            read_tag(path)
    same = tmp_path / "same-twice"
    same.write_bytes(a.encode() + b"--" + a.encode())
    assert read_tag(same) == a


@pytest.mark.parametrize(
    "text, message",
    [
        ("1.0.0+local", "local part"),
        ("1!2.0", "epoch"),
        ("1.0-RC1", "written '1.0rc1'"),
        ("banana", "PEP 440"),
    ],
)
def test_versions_a_package_cannot_carry(text: str, message: str) -> None:
    with pytest.raises(VersionError, match=message):
        package_version(text)


def test_versions_order_by_pep_440() -> None:
    assert package_version("1.2.0rc1") == "1.2.0rc1"
    assert is_newer("1.10.0", "1.9.0") is True
    assert is_newer("1.0.0rc1", "1.0.0") is False
    assert is_newer("1.0.0", "1.0.0") is False
    assert is_newer("1.0.0", "0.0.0+unknown") is True
    assert is_newer("x", "1.0") is None

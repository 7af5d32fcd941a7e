"""The Sensirion CRC-8 (sensors/_crc.py).

Reference: Sensirion SHT3x-DIS datasheet (Version 5, May 2018), section 4.12,
Table 20 "I2C CRC properties": poly 0x31, init 0xFF, no reflection, final XOR
0x00, example CRC(0xBEEF) = 0x92. The AHT20 (ASAIR AHT20 product manual,
section 5.4 step 4) uses the same parameters.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensors._crc import crc8, word_with_crc

pytestmark = pytest.mark.unit


def test_datasheet_example_beef() -> None:
    # SHT3x-DIS datasheet Table 20: CRC(0xBEEF) = 0x92.
    assert crc8(b"\xbe\xef") == 0x92
    assert crc8(bytearray([0xBE, 0xEF])) == 0x92
    assert crc8([0xBE, 0xEF]) == 0x92


def test_empty_input_is_the_initial_value() -> None:
    assert crc8(b"") == 0xFF


def test_single_zero_byte_by_hand() -> None:
    # 0x00 shifted in: register 0xFF ^ 0x00 = 0xFF = 1111_1111.
    # 8 steps, each "MSB set -> (reg << 1) ^ 0x31, else reg << 1" (8-bit):
    #   1111_1111 -> 1111_1110 ^ 0011_0001 = 1100_1111 (0xCF)
    #   1100_1111 -> 1001_1110 ^ 0011_0001 = 1010_1111 (0xAF)
    #   1010_1111 -> 0101_1110 ^ 0011_0001 = 0110_1111 (0x6F)
    #   0110_1111 -> 1101_1110                          (0xDE)  MSB was 0
    #   1101_1110 -> 1011_1100 ^ 0011_0001 = 1000_1101 (0x8D)
    #   1000_1101 -> 0001_1010 ^ 0011_0001 = 0010_1011 (0x2B)
    #   0010_1011 -> 0101_0110                          (0x56)
    #   0101_0110 -> 1010_1100                          (0xAC)
    assert crc8(b"\x00") == 0xAC


def test_two_zero_bytes_by_hand() -> None:
    # Continue from 0xAC with the second 0x00: register 0xAC = 1010_1100.
    #   1010_1100 -> 0101_1000 ^ 0011_0001 = 0110_1001 (0x69)
    #   0110_1001 -> 1101_0010                          (0xD2)
    #   1101_0010 -> 1010_0100 ^ 0011_0001 = 1001_0101 (0x95)
    #   1001_0101 -> 0010_1010 ^ 0011_0001 = 0001_1011 (0x1B)
    #   0001_1011 -> 0011_0110                          (0x36)
    #   0011_0110 -> 0110_1100                          (0x6C)
    #   0110_1100 -> 1101_1000                          (0xD8)
    #   1101_1000 -> 1011_0000 ^ 0011_0001 = 1000_0001 (0x81)
    assert crc8(b"\x00\x00") == 0x81


def test_single_byte_0x31_by_hand() -> None:
    # 0xFF ^ 0x31 = 0xCE = 1100_1110.
    #   1100_1110 -> 1001_1100 ^ 0011_0001 = 1010_1101 (0xAD)
    #   1010_1101 -> 0101_1010 ^ 0011_0001 = 0110_1011 (0x6B)
    #   0110_1011 -> 1101_0110                          (0xD6)
    #   1101_0110 -> 1010_1100 ^ 0011_0001 = 1001_1101 (0x9D)
    #   1001_1101 -> 0011_1010 ^ 0011_0001 = 0000_1011 (0x0B)
    #   0000_1011 -> 0001_0110                          (0x16)
    #   0001_0110 -> 0010_1100                          (0x2C)
    #   0010_1100 -> 0101_1000                          (0x58)
    assert crc8(b"\x31") == 0x58


def test_real_aht20_frames() -> None:
    # Two 7-byte AHT20 frames captured from real chips and published with
    # their CRC byte (status + 5 data bytes, then the CRC):
    # 1C 26 9A 76 42 E7 | 76   and   18 93 AC 95 2A C5 | B3
    assert crc8(bytes.fromhex("1c269a7642e7")) == 0x76
    assert crc8(bytes.fromhex("1893ac952ac5")) == 0xB3


def test_word_with_crc() -> None:
    assert word_with_crc(0xBEEF) == b"\xbe\xef\x92"
    assert word_with_crc(0x0000) == b"\x00\x00\x81"
    with pytest.raises(ValueError):
        word_with_crc(0x10000)


@given(st.binary(min_size=0, max_size=16))
def test_appending_the_crc_gives_zero_remainder(data: bytes) -> None:
    # Without final XOR or reflection, running the CRC over data + crc
    # leaves a zero register: the property receivers rely on.
    assert crc8(data + bytes([crc8(data)])) == 0


@given(st.binary(min_size=2, max_size=2), st.integers(0, 15))
def test_any_single_bit_flip_in_a_word_is_detected(word: bytes, bit: int) -> None:
    flipped = bytearray(word)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert crc8(bytes(flipped)) != crc8(word)

"""CRC-8 used by Sensirion (SHT3x, SHT4x) and ASAIR (AHT20) humidity sensors.

Parameters, from the Sensirion SHT3x-DIS datasheet (Version 5, May 2018),
section 4.12 "Checksum Calculation", Table 20 "I2C CRC properties":

- width 8 bit, polynomial 0x31 (x^8 + x^5 + x^4 + 1)
- initialisation 0xFF, no input or output reflection, final XOR 0x00
- example: CRC(0xBEEF) = 0x92

The SHT4x datasheet uses the same checksum over each 2-byte word, and the
ASAIR AHT20 product manual (section 5.4, step 4) specifies the same
polynomial (1 + x^4 + x^5 + x^8) with initial value 0xFF over the first six
bytes of a measurement frame.
"""

from __future__ import annotations

from collections.abc import Iterable

#: The generator polynomial x^8 + x^5 + x^4 + 1 without its x^8 term.
POLYNOMIAL = 0x31
#: The register's value before the first byte is shifted in.
INITIAL = 0xFF


def crc8(data: bytes | bytearray | Iterable[int]) -> int:
    """The Sensirion CRC-8 of ``data`` (MSB first, poly 0x31, init 0xFF).

    >>> hex(crc8(b"\\xbe\\xef"))
    '0x92'
    """
    crc = INITIAL
    for byte in data:
        crc ^= byte
        for _ in range(8):
            if crc & 0x80:
                crc = ((crc << 1) ^ POLYNOMIAL) & 0xFF
            else:
                crc = (crc << 1) & 0xFF
    return crc


def word_with_crc(word: int) -> bytes:
    """A 16-bit word as the chips send it: MSB, LSB, CRC-8 of those two."""
    if not 0 <= word <= 0xFFFF:
        raise ValueError(f"not a 16-bit word: {word!r}")
    pair = word.to_bytes(2, "big")
    return pair + bytes([crc8(pair)])

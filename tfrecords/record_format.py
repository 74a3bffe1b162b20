"""TFRecord files and `tf.train.Example` records, written without TensorFlow.

Ingestion workers only copy bytes, so they need neither TensorFlow's start-up
(seconds and ~300 MB per process) nor its threads. The two formats are small and
stable, so they are encoded here directly:

* TFRecord framing: for each record, uint64 length (little endian), uint32 masked
  CRC32C of the length, the data, uint32 masked CRC32C of the data.
* `tf.train.Example` protobuf: Example{features: Features{feature: map<string,
  Feature>}}, where a Feature holds a BytesList (field 1) or an Int64List (field 3).

`tests/test_record_format.py` reads what this writes back with TensorFlow.
"""

import struct
from typing import BinaryIO, Mapping

import google_crc32c

_MASK_DELTA = 0xA282EAD8
_LENGTH_DELIMITED = 2


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_record(handle: BinaryIO, data: bytes) -> int:
    """Append one framed record to an open TFRecord file; returns bytes written."""
    length = struct.pack("<Q", len(data))
    handle.write(length)
    handle.write(struct.pack("<I", masked_crc32c(length)))
    handle.write(data)
    handle.write(struct.pack("<I", masked_crc32c(data)))
    return len(data) + 16


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 is encoded as its two's complement, 10 bytes if < 0
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _feature(value: bytes | str | int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (bytes, str, int)):
        raise TypeError(f"feature values are bytes, str or int, not {type(value).__name__}")
    if isinstance(value, int):
        return _field(3, _field(1, _varint(value)))  # Int64List, packed
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _field(1, _field(1, value))  # BytesList with one value


def encode_example(features: Mapping[str, bytes | str | int]) -> bytes:
    """Serialise a flat dict of scalar features as a `tf.train.Example`.

    Strings are stored as UTF-8 bytes features, ints as int64 features. Keys are
    written in sorted order so that the same features give the same bytes.
    """
    entries = b"".join(
        _field(1, _field(1, key.encode("utf-8")) + _field(2, _feature(features[key])))
        for key in sorted(features)
    )
    return _field(1, entries)

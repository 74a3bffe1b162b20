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


class RecordFormatError(ValueError):
    """Bytes that are not a TFRecord record (or a `tf.train.Example`) where one was expected."""


def record_offsets(handle: BinaryIO) -> list[int]:
    """The byte offset of each record of an open TFRecord file, in order, from the framing
    alone: each length is read (and its CRC checked), the data skipped."""
    offsets, position = [], 0
    while True:
        handle.seek(position)
        header = handle.read(12)
        if not header:
            return offsets
        if len(header) < 12 or struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
            raise RecordFormatError(f"no TFRecord record at byte {position}: a damaged or truncated file")
        offsets.append(position)
        position += struct.unpack("<Q", header[:8])[0] + 16


def read_record_at(handle: BinaryIO, offset: int) -> bytes:
    """The data of the record at `offset` of an open TFRecord file, both CRCs checked."""
    handle.seek(offset)
    header = handle.read(12)
    if len(header) < 12 or struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
        raise RecordFormatError(f"no TFRecord record at byte {offset}")
    length = struct.unpack("<Q", header[:8])[0]
    data, footer = handle.read(length), handle.read(4)
    if len(data) < length or len(footer) < 4 or struct.unpack("<I", footer)[0] != masked_crc32c(data):
        raise RecordFormatError(f"the record at byte {offset} fails its CRC: a damaged file")
    return data


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise RecordFormatError("a truncated or overlong varint in a tf.train.Example")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7


def _fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """The (field number, payload) pairs of a protobuf message: length-delimited ones as bytes,
    varints as ints; other wire types are refused (a tf.train.Example has none)."""
    fields, position = [], 0
    while position < len(data):
        key, position = _read_varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _read_varint(data, position)
            fields.append((number, value))
        elif wire == _LENGTH_DELIMITED:
            length, position = _read_varint(data, position)
            if position + length > len(data):
                raise RecordFormatError("a truncated field in a tf.train.Example")
            fields.append((number, data[position:position + length]))
            position += length
        else:
            raise RecordFormatError(f"wire type {wire} in a tf.train.Example")
    return fields


def decode_example(data: bytes) -> dict[str, bytes | int | None]:
    """A `tf.train.Example` of scalar features (as `encode_example` writes, or TensorFlow) as a
    dict: a BytesList's first value as bytes, an Int64List's (packed or not) as int, None when empty."""
    features = {}
    for number, message in _fields(data):
        if number != 1 or isinstance(message, int):
            continue
        for entry_number, entry in _fields(message):
            if entry_number != 1 or isinstance(entry, int):
                continue
            parts = dict(_fields(entry))
            key, feature = parts.get(1, b""), parts.get(2, b"")
            value = None
            for kind, values in _fields(feature):
                inner = _fields(values) if isinstance(values, bytes) else []
                if kind == 1 and inner:  # BytesList: repeated bytes value = 1
                    value = inner[0][1]
                elif kind == 3 and inner:  # Int64List: value = 1, packed (bytes of varints) or not (ints)
                    first = inner[0][1]
                    value = _read_varint(first, 0)[0] if isinstance(first, bytes) else first
                    value -= (value >> 63) << 64  # two's complement
            features[key.decode("utf-8")] = value
    return features

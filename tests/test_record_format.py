"""Records written without TensorFlow must be read by TensorFlow, checksums included."""

import tensorflow as tf

from tfrecords.record_format import encode_example, write_record


def test_records_written_without_tensorflow_are_parsed_by_tensorflow(tmp_path):
    records = [
        {"bytes": b"\x00\xff" * 300, "text": "caf\u00e9/\u5546\u54c1.jpg", "small": 3, "negative": -1, "large": 2**40},
        {"bytes": b"", "text": "", "small": 0, "negative": -(2**63), "large": 2**63 - 1},
    ]
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as handle:
        sizes = [write_record(handle, encode_example(record)) for record in records]
    assert sum(sizes) == path.stat().st_size

    spec = {
        "bytes": tf.io.FixedLenFeature([], tf.string),
        "text": tf.io.FixedLenFeature([], tf.string),
        "small": tf.io.FixedLenFeature([], tf.int64),
        "negative": tf.io.FixedLenFeature([], tf.int64),
        "large": tf.io.FixedLenFeature([], tf.int64),
    }
    parsed = list(tf.data.TFRecordDataset(str(path)).map(lambda r: tf.io.parse_single_example(r, spec)).as_numpy_iterator())
    assert len(parsed) == 2
    for original, back in zip(records, parsed):
        assert back["bytes"] == original["bytes"]
        assert back["text"].decode("utf-8") == original["text"]
        for key in ("small", "negative", "large"):
            assert back[key] == original[key]


def test_a_flipped_byte_fails_tensorflows_checksum(tmp_path):
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as handle:
        write_record(handle, encode_example({"payload": b"abcdefgh" * 10}))
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    except tf.errors.DataLossError:
        return
    raise AssertionError("TensorFlow read a record whose data CRC is wrong")


def test_same_features_give_the_same_bytes_whatever_their_order():
    assert encode_example({"a": 1, "b": "x"}) == encode_example({"b": "x", "a": 1})


def test_records_are_found_by_offset_and_decoded_back_as_tensorflow_wrote_them(tmp_path):
    """A catalog index reads one image's record at its offset (thumbnails): the offsets of a
    file TensorFlow wrote, its records' bytes, and Examples from both encoders decode."""
    import pytest

    from tfrecords.record_format import RecordFormatError, decode_example, read_record_at, record_offsets

    examples = [
        tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes([number]) * (3 + number)])),
            "product/id": tf.train.Feature(int64_list=tf.train.Int64List(value=[number - 2])),
        })).SerializeToString()
        for number in range(4)
    ]
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)
    with open(path, "rb") as handle:
        offsets = record_offsets(handle)
        assert len(offsets) == 4 and offsets[0] == 0
        for number, offset in enumerate(offsets):
            data = read_record_at(handle, offset)
            assert data == examples[number]
            assert decode_example(data) == {"image/encoded": bytes([number]) * (3 + number), "product/id": number - 2}
    ours = encode_example({"image/id": "a/b.jpg", "image/orientation": 6, "big": 2**40, "negative": -7})
    assert decode_example(ours) == {"image/id": b"a/b.jpg", "image/orientation": 6, "big": 2**40, "negative": -7}
    damaged = bytearray(path.read_bytes())
    damaged[offsets[2] + 14] ^= 1  # a byte of the third record's data
    path.write_bytes(bytes(damaged))
    with open(path, "rb") as handle:
        assert record_offsets(handle) == offsets  # the framing alone is intact
        with pytest.raises(RecordFormatError, match="fails its CRC"):
            read_record_at(handle, offsets[2])
        with pytest.raises(RecordFormatError, match="no TFRecord record"):
            read_record_at(handle, offsets[2] + 1)

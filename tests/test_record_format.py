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

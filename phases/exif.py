"""The EXIF orientation of encoded image bytes, read with TensorFlow ops only.

An exported model (`pvs export`) must stand a phone's sideways photo upright inside its
graph: TF Serving runs no Python, so `tfrecords.images.orientation` (PIL) is not there.
`exif_orientation` reads what PIL reads for it:

* a JPEG's first APP1 segment holding "Exif\\0\\0" (its markers walked from the start up to
  the start of scan), or a PNG's eXIf chunk (its chunks walked up to IEND);
* in that TIFF block, IFD0's tag 0x0112 (the last one, as PIL's dictionary keeps it), a
  SHORT or LONG (signed or not) of count 1, in either byte order ("II" or "MM");
* with no such tag, a JPEG's XMP packet (APP1 "http://ns.adobe.com/xap/1.0/"):
  `tiff:Orientation="N"` or `<tiff:Orientation>N`, as PIL's `getexif` falls back to it.

Anything else (no tag, a value outside 1-8, a damaged block, bytes of another format)
reads as 1, as stored. Not read (PIL reads them, cameras do not write them): a PNG's
EXIF in "Raw profile type exif" text chunks and its XMP chunk. Cost: a copy of the bytes
as integers and a loop of a few small ops per JPEG segment (~10 before the pixels) or PNG
chunk.
"""

import tensorflow as tf

ORIENTATION_TAG = 0x0112  # as tfrecords.images.ORIENTATION_TAG
EXIF_HEADER = b"Exif\x00\x00"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The tag's types PIL reads as one int: SHORT, LONG, SSHORT, SLONG, with their sizes in bytes.
INTEGER_TYPES = {3: 2, 4: 4, 8: 2, 9: 4}
# JPEG markers without a length: TEM, RST0-7, SOI, EOI (and 0x00, an escaped 0xFF).
_STANDALONE_MARKERS = [0x00, 0x01, *range(0xD0, 0xD9)]
_START_OF_SCAN, _END_OF_IMAGE, _APP1 = 0xDA, 0xD9, 0xE1


def exif_orientation(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG or PNG bytes (a tf.string scalar) -> their EXIF orientation, int32 1-8, as
    `tfrecords.images.orientation` reads it (1 when they have none or it cannot be read)."""
    data = tf.cast(tf.io.decode_raw(encoded, tf.uint8), tf.int32)
    data = tf.concat([data, [0]], axis=0)  # reads past the end give this 0 (see _read)
    none = tf.constant(-1, tf.int64), tf.constant(-1, tf.int64), tf.constant(0, tf.int64)
    exif, xmp_start, xmp_length = tf.cond(
        _starts_with(data, 0, PNG_SIGNATURE), lambda: (_png_exif(data), *none[1:]),
        lambda: tf.cond(_starts_with(data, 0, b"\xff\xd8"), lambda: _jpeg_segments(data), lambda: none))
    found, value = _ifd0_orientation(data, exif)
    value = tf.cond(found | (xmp_start < 0), lambda: value,
                    lambda: _xmp_orientation(encoded, xmp_start, xmp_length))
    return tf.where((value >= 1) & (value <= 8), value, 1)


def _read(data: tf.Tensor, start, count) -> tf.Tensor:
    """Bytes [start, start + count) of `data` (its last element a 0 added) as int32 [count]; 0 beyond its ends."""
    size = tf.cast(tf.shape(data)[0] - 1, tf.int64)
    positions = tf.cast(start, tf.int64) + tf.range(tf.cast(count, tf.int64))
    return tf.gather(data, tf.where((positions >= 0) & (positions < size), positions, size))


def _starts_with(data: tf.Tensor, start, prefix: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(_read(data, start, len(prefix)), list(prefix)))


def _numbers(rows: tf.Tensor, little_endian) -> tf.Tensor:
    """Unsigned integers of bytes [n, width] (width <= 4) -> int64 [n], in the byte order given."""
    width = rows.shape[-1]
    powers = tf.constant([256**place for place in range(width)], tf.int64)
    weights = tf.where(little_endian, powers, tf.reverse(powers, [0]))
    return tf.reduce_sum(tf.cast(rows, tf.int64) * weights, axis=-1)


def _number(digits: tf.Tensor, little_endian=False) -> tf.Tensor:
    return _numbers(digits[None], little_endian)[0]


def _jpeg_segments(data: tf.Tensor):
    """Where a JPEG's EXIF TIFF block starts (-1: none), and where its last XMP packet starts
    (-1: none) and its length: its markers walked as PIL walks them, up to the start of scan."""
    size = tf.cast(tf.shape(data)[0] - 1, tf.int64)

    def step(position, exif, xmp_start, xmp_length):
        byte, marker = tf.unstack(_read(data, position, 2))
        length = _number(_read(data, position + 2, 2))
        app1 = tf.equal(marker, _APP1)
        is_exif = app1 & (exif < 0) & _starts_with(data, position + 4, EXIF_HEADER)
        is_xmp = app1 & _starts_with(data, position + 4, XMP_HEADER)
        exif = tf.where(is_exif, position + 4 + len(EXIF_HEADER), exif)
        xmp_start = tf.where(is_xmp, position + 4 + len(XMP_HEADER), xmp_start)
        xmp_length = tf.where(is_xmp, length - 2 - len(XMP_HEADER), xmp_length)
        standalone = tf.reduce_any(tf.equal(marker, _STANDALONE_MARKERS))
        skipped = tf.not_equal(byte, 0xFF) | tf.equal(marker, 0xFF)  # junk, or a fill byte before a marker
        two = tf.constant(2, tf.int64)
        advance = tf.where(skipped, two // 2, tf.where(standalone, two, two + tf.maximum(length, two)))
        return position + advance, exif, xmp_start, xmp_length

    def before_scan(position, *_):
        byte, marker = tf.unstack(_read(data, position, 2))
        at_scan = tf.equal(byte, 0xFF) & (tf.equal(marker, _START_OF_SCAN) | tf.equal(marker, _END_OF_IMAGE))
        return (position < size) & ~at_scan

    start = (tf.constant(2, tf.int64), tf.constant(-1, tf.int64), tf.constant(-1, tf.int64), tf.constant(0, tf.int64))
    return tf.while_loop(before_scan, step, start)[1:]


def _png_exif(data: tf.Tensor) -> tf.Tensor:
    """Where a PNG's eXIf chunk's TIFF block starts (after one or two "Exif\\0\\0", which PIL
    drops too), -1 when it has none: its chunks walked up to IEND."""
    size = tf.cast(tf.shape(data)[0] - 1, tf.int64)

    def step(position, exif):
        exif = tf.where(_starts_with(data, position + 4, b"eXIf"), position + 8, exif)
        return position + 12 + _number(_read(data, position, 4)), exif

    def before_end(position, exif):
        return (position < size) & (exif < 0) & ~_starts_with(data, position + 4, b"IEND")

    start = (tf.constant(len(PNG_SIGNATURE), tf.int64), tf.constant(-1, tf.int64))
    _, exif = tf.while_loop(before_end, step, start)
    for _ in range(2):
        exif = tf.where((exif >= 0) & _starts_with(data, exif, EXIF_HEADER), exif + len(EXIF_HEADER), exif)
    return exif


def _ifd0_orientation(data: tf.Tensor, tiff: tf.Tensor):
    """(whether IFD0 of the TIFF block starting at `tiff` has the orientation tag, its
    value: int32, 0 when it is not one integer of INTEGER_TYPES); (False, 1) without it."""
    order = _read(data, tiff, 2)
    little = tf.reduce_all(tf.equal(order, [0x49, 0x49]))
    valid = (tiff >= 0) & (little | tf.reduce_all(tf.equal(order, [0x4D, 0x4D])))
    directory = tiff + _number(_read(data, tiff + 4, 4), little)
    count = tf.where(valid, _number(_read(data, directory, 2), little), 0)
    entries = tf.reshape(_read(data, directory + 2, 12 * count), [-1, 12])  # tag, type, count, value
    matches = tf.where(tf.equal(_numbers(entries[:, 0:2], little), ORIENTATION_TAG))[:, 0]
    found = tf.size(matches) > 0
    entry = tf.gather(tf.concat([entries, tf.zeros([1, 12], tf.int32)], 0),
                      tf.where(found, tf.reduce_max(tf.concat([matches, [0]], 0)), count))
    kind, number = _number(entry[2:4], little), _number(entry[4:8], little)
    value = tf.constant(0, tf.int64)
    for type_number, width in INTEGER_TYPES.items():
        value = tf.where(tf.equal(kind, type_number), _number(entry[8:8 + width], little), value)
    value = tf.where(tf.equal(number, 1), value, 0)
    return found, tf.cast(tf.where(found, value, 1), tf.int32)


def _xmp_orientation(encoded: tf.Tensor, start, length) -> tf.Tensor:
    """The first `tiff:Orientation` digit of the XMP packet at [start, start + length), as
    PIL's regular expression finds it; 1 without one. int32."""
    packet = tf.strings.substr(encoded, tf.cast(start, tf.int32), tf.cast(tf.maximum(length, 0), tf.int32))
    pattern = r'tiff:Orientation(?:="|>)([0-9])'
    found = tf.strings.regex_full_match(packet, f"(?s).*{pattern}.*")
    digit = tf.strings.regex_replace(packet, f"(?s)^.*?{pattern}.*$", r"\1", replace_global=False)
    return tf.cond(found, lambda: tf.strings.to_number(digit, tf.int32), lambda: tf.constant(1, tf.int32))

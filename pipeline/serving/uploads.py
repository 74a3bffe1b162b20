"""An uploaded image, from the request to the array the model takes, or a 4xx saying why not.

The body is read with its limit checked twice: the Content-Length header before a byte is
read, then the bytes as they stream in (a chunked upload has no length), so an oversized
upload costs at most the limit in memory. The image is checked as `pvs search` checks a file
(`tfrecords.images.check_image`: decodes, within the pixel limit) and prepared as its query
images are (`tfrecords.preprocess.prepare`, upright by its EXIF orientation).
"""

from collections.abc import AsyncIterator

import numpy as np
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pipeline.search import MAX_IMAGE_PIXELS
from tfrecords.images import check_image, image_format

RAW_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
FORM_TYPE = "multipart/form-data"
FORM_FIELD = "image"


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a /search request: its raw body (Content-Type one of RAW_TYPES) or
    its multipart field `image`. HTTPException 413 (over `max_bytes`), 415 or 422 otherwise."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (*RAW_TYPES, FORM_TYPE):
        raise HTTPException(415, f"Content-Type {content_type or '(none)'!r}: send the image as the body "
                                 f"({', '.join(RAW_TYPES)}) or as the multipart/form-data field {FORM_FIELD!r}")
    body = await read_body(request, max_bytes)
    if content_type != FORM_TYPE:
        return body
    return await form_image(request, body, max_bytes)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, at most `max_bytes` of it held: 413 as soon as it is known to be larger."""
    too_large = HTTPException(413, f"the upload is over the limit of {max_bytes} bytes (--max-upload-bytes)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large  # uvicorn discards the rest of the body, a buffer at a time
        chunks.append(chunk)
    return b"".join(chunks)


async def form_image(request: Request, body: bytes, max_bytes: int) -> bytes:
    """The bytes of the form field `image` of a multipart body already read (bounded)."""
    async def once() -> AsyncIterator[bytes]:
        yield body
        yield b""

    parser = MultiPartParser(request.headers, once(), max_files=1, max_fields=16, max_part_size=max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise HTTPException(422, f"not a valid multipart/form-data body: {error}") from None
    field = form.get(FORM_FIELD)
    if not isinstance(field, UploadFile):
        raise HTTPException(422, f"the multipart body has no file field {FORM_FIELD!r}; "
                                 f"send the image as <input type=file name={FORM_FIELD}>")
    try:
        return await field.read()
    finally:
        await form.close()


def checked_orientation(data: bytes) -> int:
    """The EXIF orientation of usable image bytes; 415 (not a JPEG or PNG, or one TensorFlow
    cannot decode), 413 (over the pixel limit) or 422 (empty, truncated, corrupt) otherwise."""
    if not data:
        raise HTTPException(422, "the upload is empty; send a JPEG or PNG image")
    if image_format(data) is None:
        raise HTTPException(415, f"not a JPEG or PNG image (the upload starts with {data[:8]!r})")
    check = check_image(data, MAX_IMAGE_PIXELS)
    if check.reason is None:
        return check.orientation
    if check.reason.startswith("too large"):
        raise HTTPException(413, f"{check.reason}; send a smaller image")
    if check.reason.startswith("CMYK"):
        raise HTTPException(415, check.reason)
    raise HTTPException(422, f"{check.reason}; send a complete JPEG or PNG image")


class ImagePreparation:
    """Encoded bytes -> float32 [size, size, 3]: `tfrecords.preprocess.prepare` as one traced
    function (~3 ms an image; ~13 ms eager, op by op), safe to call from
    many threads at once."""

    def __init__(self, size: int):
        import tensorflow as tf

        from tfrecords.preprocess import prepare

        self.size = size
        signature = [tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)]
        self._prepare = tf.function(lambda data, orientation: prepare(data, size, orientation),
                                    input_signature=signature)

    def __call__(self, data: bytes, orientation: int) -> np.ndarray:
        return self._prepare(data, orientation).numpy()

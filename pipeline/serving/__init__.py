"""`pvs serve --index INDEX`: a catalog index searched over HTTP, and a web page to search it.

    pvs serve --index catalog/ --port 8080      # then open http://127.0.0.1:8080/

The index is opened once (every file checked by its sha256) and its model loaded once
(sha256 checked, Keras safe mode), then warmed with one dummy batch. `POST /search` takes
an image (the raw body, or the multipart field `image`), checked and prepared in the
request's thread as `pvs search --index` prepares a file (`uploads.py`); one worker thread
owns the model and embeds whatever requests are waiting together, in one model call a batch
(`batching.py`); `GET /items/ID` is a catalog image's JPEG thumbnail (`thumbnails.py`);
`GET /health` the counts; `GET /` the page (`page.html`). `app.py` ties them together,
`server.py` runs it under uvicorn.
"""

"""`pvs serve`: open the index and its model once, warm the model, then serve under uvicorn.

Stopping: uvicorn takes SIGINT and SIGTERM while it serves; it stops accepting, lets the
requests in flight finish (at most GRACEFUL_SECONDS) and raises the signal again, which
`pipeline.stopping` turns into `Interrupted`: the worker is stopped and the command
returns, "stopped", with status 0 (a service asked to stop did nothing wrong).
"""

import gc
import io
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfrecords.errors import UserError

GRACEFUL_SECONDS = 3  # for requests in flight at a stop; a search takes well under a second


@dataclass(frozen=True)
class ServeOptions:
    """The options of `pvs serve` (pipeline/cli_options.py says what each means)."""

    index_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int = 16  # searches embedded in one model call
    batch_wait_ms: float = 5.0  # how long the worker waits for more searches after the first
    max_upload_bytes: int = 10_000_000
    thumbnail_size: int = 256  # pixels of a thumbnail's longest side


def open_service(options: ServeOptions):
    """The index (every file checked), its model (sha256 checked, safe mode) warmed, the worker started."""
    from phases.checkpoints import load_model
    from pipeline.catalog.index import open_catalog
    from pipeline.serving.app import SearchService
    from pipeline.serving.batching import SearchBatcher
    from pipeline.serving.thumbnails import Thumbnails
    from pipeline.serving.uploads import ImagePreparation

    index = open_catalog(options.index_dir)
    model = load_model(index.model_path, index.model_sha256, compile=False)
    preparation = ImagePreparation(model.input_shape[1])
    batcher = SearchBatcher(index, model, options.max_batch, options.batch_wait_ms / 1000)
    batcher.warm(preparation(_grey_jpeg(), 1))  # also traces the preparation
    batcher.start()
    return SearchService(index, batcher, preparation, Thumbnails(index, options.thumbnail_size),
                         options.max_upload_bytes)


def serve(options: ServeOptions) -> None:
    """Serve until Ctrl-C or SIGTERM; prints `serving INDEX (N images) at URL` once it answers."""
    from pipeline.stopping import Interrupted

    listening = _listen(options.host, options.port)  # a port in use is refused before the model loads
    try:
        service = open_service(options)
    except BaseException:
        listening.close()
        raise
    try:
        server = _server(service, options, listening)
        server.run(sockets=[listening])
    except Interrupted as stop:
        print(f"stopped ({stop})", file=sys.stderr, flush=True)
    finally:
        service.batcher.stop()
        listening.close()
        # The interpreter's last garbage collection walks TensorFlow's objects for ~3 s; frozen,
        # they are left to the process' exit, and a stopped service exits in a fraction of a second.
        gc.freeze()


def _server(service, options: ServeOptions, listening: socket.socket):
    import uvicorn

    from pipeline.serving.app import create_app

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                host, port = listening.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"serving {options.index_dir} ({len(service.index.image_ids)} images) at "
                      f"http://{shown}:{port}/", flush=True)

    config = uvicorn.Config(create_app(service), lifespan="off", log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS)
    return Server(config)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a UserError saying why it cannot be. uvicorn listens on it
    once the model is warm: until then a connection is refused rather than left waiting.

    Made with the protocol IPPROTO_TCP named, as getaddrinfo gives it: asyncio turns Nagle's
    algorithm off (TCP_NODELAY) only on connections of such a socket, and with it on, each
    answer on a kept-alive connection waits ~40 ms for the client's delayed ACK (measured:
    GET /health 44 ms instead of 2)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listening = socket.socket(family, kind, protocol)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.bind(address)
        except BaseException:
            listening.close()
            raise
        return listening
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}; "
                        "choose another --port (or --host)") from None


def _grey_jpeg() -> bytes:
    """A small JPEG: the dummy request that traces the preparation and the model at start."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()

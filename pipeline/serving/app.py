"""The HTTP endpoints of `pvs serve`: a FastAPI app over one opened `SearchService`.

    POST /search?k=10        an image (raw body or multipart field `image`) -> its k nearest catalog items
    GET  /items/{image_id}   a catalog image's JPEG thumbnail
    GET  /health             the index, the model and the counts
    GET  /                   the search page

Every error is JSON `{"detail": "..."}` with a 4xx status that says what was wrong with the request.
"""

import asyncio
import time
from dataclasses import dataclass, field
from importlib.resources import files
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pipeline.catalog.index import CatalogIndex
from pipeline.serving.batching import SearchBatcher
from pipeline.serving.thumbnails import Thumbnails
from pipeline.serving.uploads import ImagePreparation, checked_orientation, read_upload

MAX_K = 100  # results a search may ask for
PAGE = "page.html"


@dataclass
class SearchService:
    """An opened index with its warmed model's worker, thumbnails and upload limit."""

    index: CatalogIndex
    batcher: SearchBatcher
    preparation: ImagePreparation
    thumbnails: Thumbnails
    max_upload_bytes: int
    rejected: int = 0  # searches answered with a 4xx
    started: float = field(default_factory=time.monotonic)

    def prepared(self, data: bytes) -> np.ndarray:
        """Checked image bytes as the model takes them (HTTPException when unusable)."""
        return self.preparation(data, checked_orientation(data))

    def describe(self) -> dict:
        manifest = self.index.manifest
        return {"path": str(self.index.folder), "count": len(self.index.image_ids),
                "products": len(self.index.product_names), "model_sha256": self.index.model_sha256[:12],
                "kind": manifest["kind"], "test_time_augmentation": self.index.test_time_augmentation}


def create_app(service: SearchService) -> FastAPI:
    app = FastAPI(title="product-visual-search", docs_url=None, redoc_url=None, openapi_url=None)
    page = (files("pipeline.serving") / PAGE).read_text(encoding="utf-8")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape is a list of dicts; one sentence reads better and matches our other errors.
        problems = "; ".join(f"{'.'.join(map(str, problem['loc'][1:])) or 'request'}: {problem['msg']}"
                             for problem in error.errors())
        return JSONResponse({"detail": problems}, status_code=422)

    @app.post("/search")
    async def search(request: Request, k: int = Query(10, ge=1, le=MAX_K)) -> dict:
        began = time.perf_counter()
        try:
            data = await read_upload(request, service.max_upload_bytes)
            image = await run_in_threadpool(service.prepared, data)
        except HTTPException:
            service.rejected += 1
            raise
        rows, similarities = await asyncio.wrap_future(service.batcher.submit(image, k))
        index = service.index
        results = [{"rank": rank, "image_id": index.image_ids[row].decode(), "product": index.product_name(row),
                    "similarity": float(similarity), "thumbnail": f"/items/{quote(index.image_ids[row].decode())}"}
                   for rank, (row, similarity) in enumerate(zip(rows, similarities), start=1)]
        return {"results": results, "took_ms": round((time.perf_counter() - began) * 1000, 2),
                "index": service.describe()}

    @app.get("/items/{image_id:path}")
    def item(image_id: str) -> Response:
        thumbnail = service.thumbnails.jpeg(image_id)
        if thumbnail is None:
            raise HTTPException(404, f"no catalog image has the id {image_id!r}")
        # The index does not change while it is served: browsers may keep thumbnails an hour.
        return Response(thumbnail, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/health")
    def health() -> dict:
        batcher = service.batcher
        return {"status": "ok", "count": len(service.index.image_ids), "model_sha256": service.index.model_sha256,
                "index": service.describe(), "requests": batcher.requests, "model_calls": batcher.model_calls,
                "largest_batch": batcher.largest_batch, "queued": batcher.queued, "rejected": service.rejected,
                "max_batch": batcher.max_batch, "uptime_s": round(time.monotonic() - service.started, 1)}

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    return app

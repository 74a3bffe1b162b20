"""`pvs serve --index`: the catalog index searched over HTTP, by one real `pvs serve` process
(started once for the module on 127.0.0.1) and by its page in headless Chromium."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from browser import CHROMIUM
from conftest import free_port, stop, wait_for_http
from test_catalog_index import built, sources  # noqa: F401  (the module's tiny catalog index, by `pvs index build`)
from test_search import run_dir  # noqa: F401  (the run that index is built with)

from pipeline.catalog.index import open_catalog, search_catalog
from pipeline.search import Query, embed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_load import png_bomb  # noqa: E402  (the load test refuses the same decompression bomb)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]  # one worker starts the service once
MAX_UPLOAD = 2_000_000  # the service's --max-upload-bytes here: an oversized upload is quick to send
THUMBNAIL = 40  # --thumbnail-size: under the tiny demo's 48 px, so thumbnails are really shrunk


def serve_command(index: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "serve", "--index", str(index), "--port", str(port),
            "--max-upload-bytes", str(MAX_UPLOAD), "--thumbnail-size", str(THUMBNAIL)]


@pytest.fixture(scope="module")
def service(built, tmp_path_factory):  # noqa: F811
    """The base URL of `pvs serve` on the built index; its output goes to the fixture's folder."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    with open(folder / "out.log", "w") as out, open(folder / "err.log", "w") as err:
        process = subprocess.Popen(serve_command(built, port), stdout=out, stderr=err, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def catalog_images(built, sources) -> list[tuple[str, Path]]:  # noqa: F811
    """(image id, file) of every catalog image, in the index's order."""
    files = {path.relative_to(source).as_posix(): path for source in sources for path in source.rglob("*.*")}
    return [(image_id.decode(), files[image_id.decode()]) for image_id in open_catalog(built).image_ids]


def search(url: str, data: bytes, k: int = 10, content_type: str = "image/jpeg", **options) -> httpx.Response:
    return httpx.post(f"{url}/search", params={"k": k}, content=data, headers={"Content-Type": content_type},
                      timeout=60, **options)


def test_a_catalog_image_uploaded_raw_or_as_a_form_comes_first_ranked_as_pvs_search_ranks_it(
        service, built, catalog_images):  # noqa: F811
    image_id, path = catalog_images[len(catalog_images) // 2]
    raw = search(service, path.read_bytes(), k=10)
    form = httpx.post(f"{service}/search", params={"k": 10}, files={"image": (path.name, path.read_bytes())},
                      timeout=60)
    assert raw.status_code == 200 and form.status_code == 200, raw.text + form.text
    answer = raw.json()
    first = answer["results"][0]
    assert first["image_id"] == image_id and first["rank"] == 1
    assert first["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert form.json()["results"] == answer["results"]
    index = open_catalog(built)
    assert first["product"] == index.product_name(catalog_images.index((image_id, path)))
    assert answer["index"]["count"] == len(catalog_images) and index.model_sha256.startswith(answer["index"]["model_sha256"])
    # What `pvs search --index` finds for the same file: the same items in the same order.
    rows, similarities = search_catalog(index, embed(index, [Query(str(path), path)]), 10)
    assert [result["image_id"] for result in answer["results"]] == [index.image_ids[row].decode() for row in rows[0]]
    np.testing.assert_allclose([result["similarity"] for result in answer["results"]], similarities[0], atol=1e-4)


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl here")
def test_the_readmes_curl_command_gets_the_results_as_json(service, catalog_images):
    """README's `curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' URL/search?k=5`, as written."""
    import json
    import re

    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("curl ") and "/search" in line)
    image_id, path = next((image_id, path) for image_id, path in catalog_images if path.suffix == ".jpg")
    command = re.sub(r"http://127\.0\.0\.1:8080", service, line).replace("@photo.jpg", f"@{path}").split("#")[0]
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert len(results) == 5 and results[0]["image_id"] == image_id


def test_thumbnails_are_jpegs_within_the_size_and_unknown_or_path_like_ids_are_not_found(
        service, catalog_images):
    for image_id, path in catalog_images[:3]:
        response = httpx.get(f"{service}/items/{image_id}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(response.content)) as thumbnail, Image.open(path) as original:
            assert thumbnail.format == "JPEG" and max(thumbnail.size) == THUMBNAIL
            assert thumbnail.size[0] / thumbnail.size[1] == pytest.approx(original.size[0] / original.size[1], abs=0.1)
    for missing in ("no/such/image.jpg", "..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                    catalog_images[0][0].replace("/", "/../", 1)):
        response = httpx.get(f"{service}/items/{missing}")
        assert response.status_code == 404 and "no catalog image" in response.json()["detail"]
    escaped = httpx.get(httpx.URL(f"{service}/items/../../etc/passwd"))  # httpx normalises the dots away
    assert escaped.status_code == 404


def test_bad_uploads_get_a_4xx_saying_why_and_the_service_answers_after_them(service, catalog_images):
    jpeg = catalog_images[0][1].read_bytes()

    def chunked(total: int):
        for _ in range(total // 65536 + 1):
            yield bytes(65536)

    refused = {
        "text as text/plain": (search(service, b"hello, world\n", content_type="text/plain"), 415),
        "text as bytes": (search(service, b"hello, world\n", content_type="application/octet-stream"), 415),
        "empty body": (search(service, b""), 422),
        "truncated JPEG": (search(service, jpeg[: len(jpeg) // 2]), 422),
        "oversized body": (search(service, bytes(MAX_UPLOAD + 1)), 413),
        "oversized chunked body": (search(service, chunked(3 * MAX_UPLOAD)), 413),
        "PNG over the pixel limit": (search(service, png_bomb(10_000), content_type="image/png"), 413),
        "k=0": (search(service, jpeg, k=0), 422),
        "k=1000": (search(service, jpeg, k=1000), 422),
        "form without its image field": (httpx.post(f"{service}/search", files={"photo": ("a.jpg", jpeg)}), 422),
    }
    for case, (response, status) in refused.items():
        assert response.status_code == status, f"{case}: {response.status_code} {response.text[:300]}"
        assert isinstance(response.json()["detail"], str) and response.json()["detail"], case
    assert "over the limit" in refused["oversized body"][0].json()["detail"]
    assert "k:" in refused["k=1000"][0].json()["detail"]
    health = httpx.get(f"{service}/health").json()
    assert health["status"] == "ok" and health["rejected"] >= len(refused) - 2  # the k= ones never reach the upload
    assert search(service, jpeg, k=1).json()["results"][0]["image_id"] == catalog_images[0][0]


def test_concurrent_searches_share_model_calls_and_each_gets_its_own_answer(service, catalog_images):
    chosen = catalog_images[:: max(1, len(catalog_images) // 16)][:16]
    before = httpx.get(f"{service}/health").json()

    def first_result(path: Path) -> str:
        response = search(service, path.read_bytes(), k=3)
        assert response.status_code == 200, response.text
        return response.json()["results"][0]["image_id"]

    with ThreadPoolExecutor(len(chosen)) as pool:
        found = list(pool.map(first_result, [path for _, path in chosen]))
    after = httpx.get(f"{service}/health").json()
    assert found == [image_id for image_id, _ in chosen]
    assert after["requests"] - before["requests"] == len(chosen)
    assert after["model_calls"] - before["model_calls"] < len(chosen)  # batched
    assert 1 < after["largest_batch"] <= after["max_batch"]


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium here (.ci/run installs Debian's)")
def test_the_page_searches_a_picked_photo_and_shows_it_first(service, catalog_images, tmp_path):
    from browser import Browser

    image_id, path = catalog_images[len(catalog_images) // 3]
    browser = Browser()
    try:
        browser.call("Emulation.setDeviceMetricsOverride", browser.session, width=1100, height=640,
                     deviceScaleFactor=1, mobile=False)
        browser.open(f"{service}/")
        assert browser.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
        root = browser.call("DOM.getDocument", browser.session)["root"]["nodeId"]
        node = browser.call("DOM.querySelector", browser.session, nodeId=root, selector="#file")["nodeId"]
        browser.call("DOM.setFileInputFiles", browser.session, nodeId=node, files=[str(path)])
        state = browser.wait_for(
            "(() => { const grid = document.getElementById('results');"
            " if (grid.dataset.state === 'error') return 'error';"
            " const images = [...grid.querySelectorAll('img')], query = document.getElementById('query');"
            " return grid.dataset.state === 'done' && images.length && query.complete"
            "   && images.every(i => i.complete && i.naturalWidth > 0) && 'done'; })()")
        shown = browser.evaluate(
            "[...document.querySelectorAll('#results figure')].map(f => [f.dataset.imageId,"
            " ...['.rank', '.similarity', '.product'].map(part => f.querySelector(part).textContent.trim())])")
        status = browser.evaluate("document.getElementById('status').textContent")
        browser.screenshot(tmp_path / "search-page.png")
    finally:
        browser.close()
    assert state == "done", f"the page did not show its results; it says: {status}"
    shown_id, rank, similarity, product = shown[0]
    assert shown_id == image_id and rank == "#1" and float(similarity) == pytest.approx(1.0, abs=1e-4)
    assert len(similarity.split(".")[1]) == 4 and product == image_id.split("/")[1]  # demo ids: CATEGORY/PRODUCT/SHOT
    assert len(shown) == 12 and "12 results" in status
    if os.environ.get("PVS_SCREENSHOTS"):  # a folder to keep the picture in; the README's is of runs/demo's index
        shutil.copy(tmp_path / "search-page.png", Path(os.environ["PVS_SCREENSHOTS"]) / "search-page.png")


def test_sigterm_stops_the_service_within_seconds_after_its_ready_line(built, tmp_path):  # noqa: F811
    process = subprocess.Popen(serve_command(built, 0), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        line = process.stdout.readline()  # printed once it answers; --port 0: a free port, named here
        assert line.startswith(f"serving {built} (") and " images) at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].strip()
        assert httpx.get(f"{url}health").json()["status"] == "ok"
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)
        took = time.monotonic() - began
    finally:
        stop(process)
    log = process.stderr.read()
    assert status == 0 and took < 5, (status, took, log[-2000:])
    assert "stopped (SIGTERM)" in log

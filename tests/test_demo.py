"""The demo (issue 13): Gradio app served on 127.0.0.1, driven by headless Chromium and by gradio_client; the Space
folder the main job writes; the gallery embedding cache.

Reference values come from stock ``transformers.CLIPModel`` / ``CLIPTokenizer`` on the same checkpoint, not from
the demo's code path. The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them); without them it skips locally and FAILS in CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import SpaceCard
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from modeling_georsclip import demo  # noqa: E402
from modeling_georsclip.evaluation.templates import RS_TEMPLATES  # noqa: E402
from modeling_georsclip.gallery import GalleryIndex  # noqa: E402
from modeling_georsclip.inference import load_model  # noqa: E402
from modeling_georsclip.resources import samples_dir  # noqa: E402
from modeling_georsclip.space import space_model, write_main_space, write_space  # noqa: E402
from modeling_georsclip.testing import save_tiny_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGES = samples_dir() / "images"
AIRPORT = IMAGES / "remoteclip__airport.jpg"
GEOTIFF = IMAGES / "riotiler__201404_13SED190110_201404_0x1500m_CL_1.tif"  # EPSG:26913, 383 x 232
LABELS = ["airport", "farmland", "forest"]
UPLOAD_LIMIT = "1mb"


# ---------------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stock_reference(model_dir: Path):
    """Stock transformers CLIP pieces for reference values (no GeoRSCLIP code in the loop)."""
    from transformers import CLIPModel, CLIPTokenizer

    return CLIPModel.from_pretrained(model_dir).eval(), CLIPTokenizer.from_pretrained(model_dir)


@torch.no_grad()
def stock_text(model, tokenizer, texts: list[str], normalize: bool = True) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    out = model.get_text_features(**enc)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return F.normalize(feats, dim=-1) if normalize else feats


@torch.no_grad()
def stock_image(model, processor, path: Path) -> torch.Tensor:
    pixels = processor(images=str(path), return_tensors="pt")["pixel_values"]
    out = model.get_image_features(pixel_values=pixels)
    return F.normalize(out.pooler_output if hasattr(out, "pooler_output") else out, dim=-1)


def reference_probabilities(model_dir: Path, processor, image: Path, labels: list[str]) -> list[float]:
    """The paper's ensemble by hand: mean of raw template embeddings, normalised; softmax of scaled cosines."""
    model, tokenizer = stock_reference(model_dir)
    head = torch.stack([F.normalize(stock_text(model, tokenizer, [t.format(label) for t in RS_TEMPLATES],
                                               normalize=False).mean(0), dim=-1) for label in labels])
    logits = model.logit_scale.exp() * stock_image(model, processor, image) @ head.T
    return logits.softmax(-1)[0].tolist()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("demo") / "GeoRSCLIP-tiny", image_size=32)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir)


# ---------------------------------------------------------------------------------------------------- fast tests
def test_labels_and_query_are_checked():
    assert demo.parse_labels(" airport, ,farmland,airport ,") == ["airport", "farmland"]
    for bad in ("", " , ,", None):
        with pytest.raises(demo.DemoInputError, match="at least one label"):
            demo.parse_labels(bad)
    with pytest.raises(demo.DemoInputError, match="at most"):
        demo.parse_labels(",".join(f"c{i}" for i in range(demo.MAX_LABELS + 1)))
    assert demo.check_query("  boats ") == "boats"
    with pytest.raises(demo.DemoInputError, match="Enter a text query"):
        demo.check_query("   ")


def test_demo_window_sizes_fit_the_scene():
    assert demo.demo_window_sizes(1024, 1024, "a") == [256, 512, 768]
    assert demo.demo_window_sizes(232, 383, "a") == [116, 232]
    with pytest.raises(demo.DemoInputError, match="at least 64 px"):
        demo.demo_window_sizes(40, 500, "thin.png")
    with pytest.raises(demo.DemoInputError, match="modeling_georsclip.localize"):
        demo.demo_window_sizes(5000, 5000, "huge.tif")


def test_classify_is_the_paper_ensemble_and_label_order_does_not_matter(tiny, tiny_dir, tmp_path):
    model, processor = tiny
    backend = demo.DemoBackend(model, processor)
    probs = backend.classify(str(AIRPORT), ", ".join(LABELS))
    expected = reference_probabilities(tiny_dir, processor, AIRPORT, LABELS)
    assert list(probs) == LABELS
    assert [probs[label] for label in LABELS] == pytest.approx(expected, abs=1e-5)
    embedded = []
    original = model.zero_shot_head
    model.zero_shot_head = lambda labels, *a, **kw: embedded.append(list(labels)) or original(labels, *a, **kw)
    try:
        swapped = backend.classify(str(AIRPORT), "forest, airport, farmland")  # cached columns, same numbers
        assert {k: pytest.approx(v, abs=1e-6) for k, v in swapped.items()} == probs and embedded == []
        backend.classify(str(AIRPORT), "forest, harbor, airport")
        assert embedded == [["harbor"]]  # only the new label is embedded
    finally:
        model.zero_shot_head = original
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    with pytest.raises(demo.DemoInputError, match=r"^notes.txt is not an image this demo can read \(.+\)\.$"):
        backend.classify(str(notes), "a, b")


def test_gallery_cache_is_keyed_by_model_and_file(tiny, tiny_dir, tmp_path):
    model, processor = tiny
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    names = ["remoteclip__airport.jpg", "cliprsicd__stadium_1.jpg", "retrievalsys__00013.jpg",
             "selo__sparseresidential_3814.tif"]
    for name in names:
        shutil.copy2(IMAGES / name, gallery / name)
    (gallery / "broken.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"

    index = GalleryIndex(gallery, model, processor, cache_dir=cache)
    hits = index.search("a stadium", k=10)
    assert sorted(p.name for p, _ in hits) == sorted(names) and index.skipped.keys() == {"broken.png"}
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    # scores against stock transformers on the same files
    ref_model, tokenizer = stock_reference(tiny_dir)
    text = stock_text(ref_model, tokenizer, ["a stadium"])[0]
    for path, score in hits:
        assert score == pytest.approx(float(stock_image(ref_model, processor, path)[0] @ text), abs=1e-5)
    assert len(list(cache.rglob("*.safetensors"))) == 1

    # a fresh index of the same model reads the cache: nothing is embedded again
    calls = []
    original = model.image_embeddings
    model.image_embeddings = lambda pixels, **kw: calls.append(len(pixels)) or original(pixels, **kw)
    try:
        again = GalleryIndex(gallery, model, processor, cache_dir=cache)
        assert again.search("a stadium", k=10) == hits and calls == []
        # a changed file is re-embedded alone; a removed one leaves the results
        shutil.copy2(IMAGES / "retrievalsys__00256.jpg", gallery / "retrievalsys__00013.jpg")
        os.utime(gallery / "retrievalsys__00013.jpg", ns=(1, 1))
        (gallery / "cliprsicd__stadium_1.jpg").unlink()
        refreshed = dict(again.search("a stadium", k=10))
        assert calls == [1] and len(refreshed) == 3
        assert refreshed[gallery / "retrievalsys__00013.jpg"] != dict(hits)[gallery / "retrievalsys__00013.jpg"]
    finally:
        model.image_embeddings = original

    # another model (same architecture, other weights) gets its own cache file
    other_model, other_processor = load_model(save_tiny_clip(tmp_path / "other", seed=1, image_size=32))
    GalleryIndex(gallery, other_model, other_processor, cache_dir=cache).search("a stadium")
    assert len(list(cache.rglob("*.safetensors"))) == 2


def test_space_folder_names_the_model_relative_or_by_hub_id(tmp_path):
    model_dir = save_tiny_clip(tmp_path / "out" / "model")
    space = write_space(tmp_path / "out" / "space", model_dir)
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "modeling_georsclip", "requirements.txt"]
    card = SpaceCard.load(space / "README.md").data
    assert card.sdk == "gradio" and card.app_file == "app.py" and card.georsclip_model == "../model"
    assert not any(str(tmp_path) in p.read_text() for p in space.iterdir() if p.is_file())  # no absolute path
    assert Path(space_model(space)).resolve() == model_dir.resolve()
    compile((space / "app.py").read_text(), "app.py", "exec")
    # the package is vendored (georsclip is not on PyPI yet): requirements are its dependencies, not itself
    requirements = (space / "requirements.txt").read_text()
    assert "georsclip" not in requirements and "transformers" in requirements and "rasterio" in requirements
    assert not any(line.startswith("gradio") and not line.startswith("gradio_client")
                   for line in requirements.splitlines())  # gradio comes from the Space's sdk_version
    vendored = space / "modeling_georsclip"
    assert (vendored / "demo.py").is_file() and (vendored / "samples" / "rs-samples").is_dir()
    assert (vendored / "tokenizer_data").is_dir() and not list(vendored.rglob("__pycache__"))
    plain = write_space(tmp_path / "plain", "me/GeoRSCLIP-B-32", vendor=False)
    assert "georsclip[demo]" in (plain / "requirements.txt").read_text()
    assert not (plain / "modeling_georsclip").exists()

    hub = SpaceCard.load(write_space(tmp_path / "hub-space", "me/GeoRSCLIP-B-32") / "README.md").data
    assert hub.models == ["me/GeoRSCLIP-B-32"] and hub.georsclip_model == "me/GeoRSCLIP-B-32"
    assert space_model(tmp_path / "hub-space") == "me/GeoRSCLIP-B-32"


def test_repo_space_is_what_write_space_writes(tmp_path):
    """spaces/georsclip-demo is generated (so it never drifts from the main job's Spaces)."""
    fresh = write_space(tmp_path / "space", "GeoRSCLIP-ViT-B-32", vendor=False)  # no second package copy in git
    repo = ROOT / "spaces" / "georsclip-demo"
    for name in ("README.md", "app.py", "requirements.txt"):
        drop_version = lambda text: "\n".join(  # noqa: E731 - CI may install another gradio
            line for line in text.splitlines() if not line.startswith("sdk_version:"))
        assert drop_version((repo / name).read_text()) == drop_version((fresh / name).read_text()), name


def test_main_job_hook_writes_and_lists_the_space(tmp_path, caplog):
    out = tmp_path / "main"
    model_dir = save_tiny_clip(out / "model")
    with caplog.at_level("INFO"):
        space = write_main_space(out, model_dir, "me/georsclip-demo", dry_run=True)
    assert space == out / "space"
    assert SpaceCard.load(space / "README.md").data.georsclip_model == "me/georsclip-demo"
    listing = caplog.text
    files = sum(1 for p in space.rglob("*") if p.is_file())
    assert f"dry run: would upload {files} files" in listing and "space repo me/georsclip-demo-demo" in listing
    for name in ("README.md", "app.py", "requirements.txt", "modeling_georsclip/demo.py"):
        assert f"  {name}" in listing
    local = write_main_space(tmp_path / "local", save_tiny_clip(tmp_path / "local" / "model"), None, dry_run=False)
    assert SpaceCard.load(local / "README.md").data.georsclip_model == "../model"


def test_cli_without_gradio_names_the_install_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert demo.main(["--model", "whatever"]) == 2
    assert 'pip install "georsclip[demo]"' in capsys.readouterr().err


def test_cli_bad_model_is_one_line(tmp_path, capsys):
    assert demo.main(["--model", str(tmp_path / "missing")]) == 1
    assert "model folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- served app
@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """The app on a free 127.0.0.1 port (Gradio's own server thread), small upload limit; closed at the end."""
    model, processor = tiny
    app = demo.build_app(model, processor, cache_dir=tmp_path_factory.mktemp("gallery-cache"))
    port = free_port()
    demo.launch(app, host="127.0.0.1", port=port, max_file_size=UPLOAD_LIMIT, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    fake = folder / "not_an_image.png"
    fake.write_text("this is text, not a PNG\n")
    huge = folder / "huge.png"
    huge.write_bytes(os.urandom(2 * 1024 * 1024))  # over the 1 MB limit the test server uses
    return {"fake": fake, "huge": huge}


@pytest.mark.slow
def test_api_endpoints_return_values_and_readable_errors(served, tiny, tiny_dir, bad_files):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    # classify: the paper ensemble, as stock transformers computes it
    out = client.predict(handle_file(str(AIRPORT)), ", ".join(LABELS), api_name="/classify")
    got = {c["label"]: c["confidence"] for c in out["confidences"]}
    expected = reference_probabilities(tiny_dir, tiny[1], AIRPORT, LABELS)
    assert [got[label] for label in LABELS] == pytest.approx(expected, abs=1e-5)

    # localize: overlay of the scene's size, GeoTIFF with the scene's CRS and transform, GeoJSON regions
    import rasterio

    overlay, info, files = client.predict(handle_file(str(GEOTIFF)), "a road", api_name="/localize")
    assert Image.open(overlay).size == (383, 232) and "EPSG:26913" in info
    tif = next(f for f in files if f.endswith(".tif"))
    with rasterio.open(tif) as heat, rasterio.open(GEOTIFF) as scene:
        assert heat.crs == scene.crs and heat.transform == scene.transform and heat.shape == scene.shape
        values = heat.read(1)
        assert values.dtype.name == "float32" and 0.0 <= values.min() < values.max() <= 1.0
    regions = json.loads(Path(next(f for f in files if f.endswith(".geojson"))).read_text())
    assert regions["features"] and regions["features"][0]["properties"]["query"] == "a road"

    # search: top k of the vendored gallery, scores as stock transformers computes them
    gallery, table = client.predict("an airport with airplanes", 4, api_name="/search")
    assert len(gallery) == 4 and [row[0] for row in table["data"]] == [1, 2, 3, 4]
    ref_model, tokenizer = stock_reference(tiny_dir)
    text = stock_text(ref_model, tokenizer, ["an airport with airplanes"])[0]
    scores = {p.name: float(stock_image(ref_model, tiny[1], p)[0] @ text) for p in demo.DemoBackend(
        *tiny).index.refresh()[0]}
    best = sorted(scores, key=scores.get, reverse=True)[:4]
    assert [row[1] for row in table["data"]] == best
    assert [row[2] for row in table["data"]] == pytest.approx([scores[n] for n in best], abs=1e-4)

    # bad input: one readable message each, and the server keeps serving
    cases = [
        ((handle_file(str(bad_files["fake"])), "a, b"), "/classify", "not_an_image.png is not an image"),
        ((handle_file(str(AIRPORT)), " , "), "/classify", "at least one label"),
        ((handle_file(str(bad_files["fake"])), "boats"), "/localize", "Cannot localize in not_an_image.png"),
        ((handle_file(str(GEOTIFF)), "  "), "/localize", "Enter a text query"),
        (("", 3), "/search", "Enter a text query"),
        ((handle_file(str(bad_files["huge"])), "a, b"), "/classify", "maximum file size"),
    ]
    for args, api, message in cases:
        with pytest.raises(Exception, match=message) as caught:
            client.predict(*args, api_name=api)
        assert "Traceback" not in str(caught.value)
    again = client.predict(handle_file(str(AIRPORT)), ", ".join(LABELS), api_name="/classify")
    assert again["label"] == out["label"]


def _browser():
    """Selenium Chrome on the system Chromium (skip locally, FAIL in CI when it is missing)."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        browser = None
    if not (browser and driver):
        message = ("headless Chromium, chromedriver and selenium are needed "
                   "(apt-get install -y chromium chromium-driver; pip install selenium)")
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI: {message}")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_browser_runs_every_tab_and_shows_bad_input_messages(served, bad_files, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    shots: dict[str, Path] = {}
    wait = WebDriverWait(driver, 40, poll_frequency=0.2)

    def css(selector: str):
        return driver.find_element(By.CSS_SELECTOR, selector)

    def upload(elem_id: str, path: Path) -> None:
        for clear in driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} button[aria-label=Clear]"):
            driver.execute_script("arguments[0].click()", clear)  # a plain click can hit the drop zone on top
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} input[type=file]"))
        css(f"#{elem_id} input[type=file]").send_keys(str(path))

    def type_into(elem_id: str, text: str) -> None:
        box = css(f"#{elem_id} textarea, #{elem_id} input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)

    def expect_toast(message: str) -> str:
        toast = wait.until(lambda d: next((t.text for t in d.find_elements(By.CSS_SELECTOR, ".toast-body")
                                           if message in t.text), None))
        assert "Traceback" not in toast and 'File "' not in toast
        for close in driver.find_elements(By.CSS_SELECTOR, ".toast-close"):
            close.click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".toast-body"))
        return toast

    def shot(name: str) -> None:
        shots[name] = tmp_path / f"{name}.png"
        driver.save_screenshot(str(shots[name]))
        print(f"screenshot {name}: {shots[name]}")

    try:
        driver.get(served)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#classify-image input[type=file]"))
        # classify: a text file named .png, an oversized upload, no labels -> messages; then a real answer
        upload("classify-image", bad_files["fake"])
        css("#classify-button").click()
        expect_toast("not_an_image.png is not an image")
        upload("classify-image", bad_files["huge"])
        expect_toast("maximum allowed size")
        upload("classify-image", AIRPORT)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#classify-preview img"))
        type_into("classify-labels", " , ")
        css("#classify-button").click()
        expect_toast("at least one label")
        type_into("classify-labels", ", ".join(LABELS))
        css("#classify-button").click()
        wait.until(lambda d: "%" in css("#classify-output").text)
        assert all(label in css("#classify-output").text for label in LABELS)
        shot("classify")

        # localize: empty query -> message; then the GeoTIFF scene's overlay, summary and files
        css("button[role=tab][data-tab-id=localize]").click()
        upload("localize-scene", GEOTIFF)
        wait.until(lambda d: "riotiler" in css("#localize-scene").text)
        type_into("localize-query", "")
        css("#localize-button").click()
        expect_toast("Enter a text query")
        type_into("localize-query", "a road")
        css("#localize-button").click()
        wait.until(lambda d: "EPSG:26913" in css("#localize-info").text)
        assert css("#localize-output img").get_attribute("src")
        assert ".tif" in css("#localize-files").text and ".geojson" in css("#localize-files").text
        shot("localize")

        # search: the top k of the gallery with scores
        css("button[role=tab][data-tab-id=search]").click()
        type_into("search-query", "an airport with airplanes")
        css("#search-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-gallery img")) >= 6)
        wait.until(lambda d: ".jpg" in css("#search-table").text or ".png" in css("#search-table").text)
        shot("search")
    finally:
        driver.quit()
        keep = os.environ.get("DEMO_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for path in shots.values():
                shutil.copy2(path, Path(keep) / path.name)
    assert all(Image.open(p).size[0] >= 1000 for p in shots.values())


@pytest.mark.slow
def test_space_app_py_serves_the_model_it_names(tmp_path):
    """The Space as the Hub runs it: `python app.py` in the folder write_space wrote, model found via README,
    the package imported from the Space's own copy."""
    from gradio_client import Client, handle_file

    out = tmp_path / "out"
    save_tiny_clip(out / "model", image_size=32)
    space = write_space(out / "space", out / "model")
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as on the Hub: no checkout on the path
    where = subprocess.run([sys.executable, "-c", "import modeling_georsclip; print(modeling_georsclip.__file__)"],
                           cwd=space, capture_output=True, text=True, env=bare)
    assert Path(where.stdout.strip()).resolve() == (space / "modeling_georsclip" / "__init__.py").resolve(), where
    port = free_port()
    env = {**bare, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "GEORSCLIP_CACHE": str(tmp_path / "cache")}
    env.pop("GEORSCLIP_MODEL", None)
    log = (tmp_path / "space.log").open("w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "space.log").read_text()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, (tmp_path / "space.log").read_text()[-3000:]
                time.sleep(1)
        out = client.predict(handle_file(str(AIRPORT)), "airport, forest", api_name="/classify")
        assert {c["label"] for c in out["confidences"]} == {"airport", "forest"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()

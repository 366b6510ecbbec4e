"""sdn-train's cache of caption embeddings in the text encoder's workdir."""

import logging
import os

import numpy as np
import pytest

from sdn_tf import train as train_lib
from sdn_tf.data.records import ImageRecord
from sdn_tf.text import encoder as enc


def make_records(captions_per_image):
    return [ImageRecord(name=f"image{index}", image_path="unused.png", captions=captions,
                        class_id=0)
            for index, captions in enumerate(captions_per_image)]


def embed(encoder_dir, records):
    return train_lib.embed_records(train_lib.SDNConfig(workdir="unused",
                                                       text_encoder=encoder_dir), records)


def cache_files(encoder_dir):
    folder = os.path.join(encoder_dir, train_lib.EMBEDDING_CACHE_DIR)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def direct_embeddings(encoder_dir, records):
    encoder = enc.load_text_encoder(encoder_dir)
    return encoder.embed([caption for record in records for caption in record.captions])


RECORDS = make_records([["a red square", "a small red square"], ["a blue circle"]])


def test_second_run_skips_encoder(tmp_path, monkeypatch, write_text_encoder):
    encoder_dir = write_text_encoder(tmp_path / "text", embedding_dim=8, seed=1)
    first = embed(encoder_dir, RECORDS)
    assert first.shape == (3, 8)
    np.testing.assert_allclose(first, direct_embeddings(encoder_dir, RECORDS), rtol=1e-6)
    assert len(cache_files(encoder_dir)) == 1

    def fail(workdir):
        raise AssertionError("the encoder was loaded although the cache contains the embeddings")

    monkeypatch.setattr(train_lib, "_text_encoder", fail)
    second = embed(encoder_dir, RECORDS)
    np.testing.assert_array_equal(second, first)


def test_cache_file_per_captions_and_weights(tmp_path, write_text_encoder):
    encoder_dir = write_text_encoder(tmp_path / "text", embedding_dim=8, seed=1)
    first = embed(encoder_dir, RECORDS)
    # The same captions split differently over images keep their order and file.
    embed(encoder_dir, make_records([["a red square"], ["a small red square", "a blue circle"]]))
    assert len(cache_files(encoder_dir)) == 1
    # Captions in another order make another list.
    swapped = make_records([["a blue circle"], ["a red square", "a small red square"]])
    embed(encoder_dir, swapped)
    assert len(cache_files(encoder_dir)) == 2
    # New weights must not read the old file.
    write_text_encoder(tmp_path / "text", embedding_dim=8, seed=2)
    retrained = embed(encoder_dir, RECORDS)
    assert not np.allclose(retrained, first)
    np.testing.assert_allclose(retrained, direct_embeddings(encoder_dir, RECORDS), rtol=1e-6)
    assert len(cache_files(encoder_dir)) == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_rows", "not_finite"])
def test_damaged_cache_recomputed(tmp_path, caplog, write_text_encoder, damage):
    encoder_dir = write_text_encoder(tmp_path / "text", embedding_dim=8, seed=1)
    expected = embed(encoder_dir, RECORDS)
    path = os.path.join(encoder_dir, train_lib.EMBEDDING_CACHE_DIR, cache_files(encoder_dir)[0])
    if damage == "garbage":
        with open(path, "wb") as file:
            file.write(b"not an npy file")
    elif damage == "truncated":
        with open(path, "rb") as file:
            head = file.read(150)
        with open(path, "wb") as file:
            file.write(head)
    elif damage == "wrong_rows":
        np.save(path, expected[:2])
    else:
        broken = expected.copy()
        broken[1, 3] = np.nan
        np.save(path, broken)
    caplog.set_level(logging.WARNING, logger="absl")
    again = embed(encoder_dir, RECORDS)
    np.testing.assert_array_equal(again, expected)
    assert "Ignoring" in caplog.text
    assert path in caplog.text
    np.testing.assert_array_equal(np.load(path), expected)


def test_unwritable_cache_warns(tmp_path, caplog, write_text_encoder):
    encoder_dir = write_text_encoder(tmp_path / "text", embedding_dim=8, seed=1)
    # A file in place of the cache folder makes the write fail, even for root.
    (tmp_path / "text" / train_lib.EMBEDDING_CACHE_DIR).write_text("in the way")
    caplog.set_level(logging.WARNING, logger="absl")
    embeddings = embed(encoder_dir, RECORDS)
    np.testing.assert_allclose(embeddings, direct_embeddings(encoder_dir, RECORDS), rtol=1e-6)
    assert "Could not cache caption embeddings" in caplog.text
    assert sorted(os.listdir(tmp_path / "text")) == sorted(
        ["config.json", enc.WEIGHTS_FILE, train_lib.EMBEDDING_CACHE_DIR])

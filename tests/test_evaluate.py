"""sdn-eval: R-precision, retrieval, SSIM/FSIM pairing, the Markdown table, and a whole run.

The whole run uses a model exported from untrained components: a text
encoder and a Stage-I generator each trained for one step on a tiny shapes
build, with a random-weight teacher and random Inception weights. Its values
only need to lie in range; the unit tests check the numbers. Building and
evaluating that model takes minutes on two CPU cores, so every test that
uses it is marked slow.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sdn_tf import evaluate as evaluate_lib
from sdn_tf import retrieval
from sdn_tf.data.records import ImageRecord
from sdn_tf.metrics.fsim import FSIM_SETTINGS
from sdn_tf.metrics.ssim import SSIM_SETTINGS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- R-precision -------------------------------------------------------------------


def caption_pool(num_classes=10, per_class=30, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(num_classes * per_class, dim))
    class_ids = np.repeat(np.arange(num_classes), per_class)
    return embeddings, class_ids


def test_r_precision_oracle_is_one():
    captions, classes = caption_pool()
    true_caption = np.arange(len(captions))
    result = evaluate_lib.r_precision(captions * 3.0, captions, classes, true_caption)
    assert result["value"] == 1.0
    assert result["num_mismatched"] == 99
    assert result["num_images"] == len(captions)


def test_r_precision_shuffled_near_chance():
    captions, classes = caption_pool()
    rng = np.random.default_rng(1)
    true_caption = rng.integers(0, len(captions), size=3000)
    images = rng.normal(size=(3000, captions.shape[1]))
    result = evaluate_lib.r_precision(images, captions, classes, true_caption)
    assert result["chance"] == pytest.approx(0.01)
    # 3000 draws at p = 0.01 have a standard deviation of about 0.0018.
    assert 0.002 < result["value"] < 0.02


def test_r_precision_ties_are_misses():
    captions, classes = caption_pool(dim=4)
    images = np.ones((20, 4))
    constant_captions = np.ones_like(captions)
    result = evaluate_lib.r_precision(images, constant_captions, classes, np.arange(20))
    assert result["value"] == 0.0


def test_r_precision_few_mismatched_recorded():
    captions, classes = caption_pool(num_classes=3, per_class=10)
    result = evaluate_lib.r_precision(captions, captions, classes, np.arange(30))
    assert result["num_mismatched"] == 20
    assert result["chance"] == pytest.approx(1 / 21)


def test_r_precision_mismatched_from_other_classes():
    # Captions of the same class are identical to the true caption, so drawing
    # one of them as a mismatched caption would tie and turn a hit into a miss.
    base = np.random.default_rng(2).normal(size=(4, 8))
    captions = np.repeat(base, 25, axis=0)
    classes = np.repeat(np.arange(4), 25)
    result = evaluate_lib.r_precision(captions, captions, classes, np.arange(100))
    assert result["value"] == 1.0


def test_r_precision_single_class_raises():
    captions = np.eye(3)
    with pytest.raises(ValueError, match="at least two classes"):
        evaluate_lib.r_precision(captions, captions, np.zeros(3), np.arange(3))


def test_r_precision_shape_mismatch_raises():
    captions, classes = caption_pool()
    with pytest.raises(ValueError, match="must be"):
        evaluate_lib.r_precision(np.ones((2, 5)), captions, classes, np.arange(2))


# --- Caption selection, SSIM/FSIM pairs, configuration -------------------------------


def make_records(count, captions_per_record=3):
    return [ImageRecord(name=f"image{i}", image_path=f"/none/{i}.png",
                        captions=[f"caption {i}.{j}" for j in range(captions_per_record)],
                        class_id=i % 2) for i in range(count)]


def test_select_captions_covers_all():
    items = evaluate_lib.select_captions(make_records(4))
    assert len(items) == 12
    assert items.record_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert items.captions[4] == "caption 1.1"


def test_select_captions_spreads_limit():
    items = evaluate_lib.select_captions(make_records(4), max_captions=4)
    assert len(items) == 4
    assert items.record_index.tolist() == [0, 1, 2, 3]
    assert items.captions[0] == "caption 0.0"
    assert items.captions[-1] == "caption 3.2"


def test_structural_identical_pairs_score_one():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    generated = real[[0, 0, 1]][:, None]
    result = evaluate_lib.structural_metrics(real, generated, np.array([0, 0, 1]))
    assert result["ssim"]["mean"] == pytest.approx(1.0)
    assert result["fsim"]["mean"] == pytest.approx(1.0)
    assert result["ssim"]["num_pairs"] == 3


def test_structural_pairs_follow_record_index():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    swapped = real[[1, 0]][:, None]
    result = evaluate_lib.structural_metrics(real, swapped, np.array([0, 1]))
    assert result["ssim"]["mean"] < 0.1


def test_structural_workers_match_single():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, size=(6, 1, 32, 32, 3), dtype=np.uint8)
    index = np.array([0, 0, 1, 1, 2, 2])
    single = evaluate_lib.structural_metrics(real, generated, index, workers=1, chunk_size=2)
    parallel = evaluate_lib.structural_metrics(real, generated, index, workers=2, chunk_size=2)
    assert parallel == single


def test_structural_flat_pairs_counted():
    real = np.full((2, 32, 32, 3), 90, np.uint8)
    generated = np.full((2, 1, 32, 32, 3), 90, np.uint8)
    generated[1, 0, 8:24, 8:24] = 200
    result = evaluate_lib.structural_metrics(real, generated, np.array([0, 1]))
    assert result["fsim"]["undefined_pairs"] == 1
    assert result["fsim"]["num_pairs"] == 1


def test_config_rejects_unknown_skip():
    config = evaluate_lib.EvalConfig(model_dir="m", output_dir="o", skip=("fid", "bleu"))
    with pytest.raises(ValueError, match="bleu"):
        config.validate()


def test_config_rejects_unknown_tap():
    config = evaluate_lib.EvalConfig(model_dir="m", output_dir="o", retrieval_tap="fc7")
    with pytest.raises(ValueError, match="fc7"):
        config.validate()


# --- Markdown ------------------------------------------------------------------------


def results_for(dataset, metrics):
    return {"dataset": dataset, "split": "test", "image_size": 64, "num_images": 20,
            "num_captions": 20, "num_real_images": 2, "images_per_caption": 1,
            "settings": evaluate_lib._settings(
                evaluate_lib.EvalConfig(model_dir="m", output_dir="o"), 64, "none"),
            "metrics": metrics, "paper": evaluate_lib.PAPER_TABLE_1.get(dataset)}


FULL_METRICS = {
    "is": {"mean": 3.21, "std": 0.04}, "fid": {"value": 55.5},
    "ssim": {"mean": 0.25}, "fsim": {"mean": 0.6},
    "r_precision": {"value": 0.2, "num_mismatched": 99, "chance": 0.01,
                    "real_images": {"value": 0.5}},
}


def test_markdown_cub_has_paper_row():
    text = evaluate_lib.format_markdown(results_for("cub", FULL_METRICS))
    assert "| CUB (SDN paper, Table 1) | 6.89 ± 0.06 | – | 0.3160 | 0.6264 | – |" in text
    assert "| CUB (test, this model) | 3.21 ± 0.04 | 55.50 | 0.2500 | 0.6000 | 0.2000 |" in text


def test_markdown_flowers_has_paper_row():
    text = evaluate_lib.format_markdown(results_for("flowers", FULL_METRICS))
    assert "| Oxford-102 (SDN paper, Table 1) | 4.28 ± 0.09 | – | 0.2174 | 0.6227 | – |" in text


def test_markdown_skipped_metric_explained():
    metrics = dict(FULL_METRICS, fid={"skipped": "requested with --skip"})
    text = evaluate_lib.format_markdown(results_for("shapes", metrics))
    assert "| 3.21 ± 0.04 | – | 0.2500" in text
    assert "FID: skipped, requested with --skip." in text
    assert "SDN paper" not in text


def test_skip_note_says_skipped_once():
    config = evaluate_lib.EvalConfig(model_dir="m", output_dir="o", skip=evaluate_lib.METRICS)
    generated = np.zeros((1, 1, 4, 4, 3), np.uint8)
    metrics = evaluate_lib._compute_metrics(config, {}, None, generated, None, None, None,
                                            None, None, {})
    assert metrics["ssim"] == {"skipped": "requested with --skip"}
    text = evaluate_lib.format_markdown(results_for("shapes", metrics))
    note = next(line for line in text.splitlines() if line.startswith("- SSIM"))
    assert note == "- SSIM: skipped, requested with --skip."


def test_inception_download_error_puts_flag_first(monkeypatch):
    import keras

    def failing_download(**kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.applications, "InceptionV3", failing_download)
    config = evaluate_lib.EvalConfig(model_dir="m", output_dir="o")
    with pytest.raises(RuntimeError) as raised:
        evaluate_lib._build_scorer(config)
    message = str(raised.value)
    assert message.index("--inception_weights=PATH") < message.index("--skip=is,fid")
    assert "--inception_weights=random" in message
    assert "InceptionScorer(" not in message
    assert message.endswith("Download error: URL fetch failure: no network")


def test_markdown_without_inception_line():
    metrics = dict(FULL_METRICS, fid={"skipped": "requested with --skip"},
                   **{"is": {"skipped": "requested with --skip"}})
    text = evaluate_lib.format_markdown(results_for("shapes", metrics))
    assert "Inception-v3:" not in text


# --- Retrieval -----------------------------------------------------------------------


def test_neighbours_rank_by_cosine():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    indices, similarities = retrieval.nearest_neighbours(np.array([[2.0, 0.1]]), gallery, k=3)
    assert indices.tolist() == [[0, 2, 1]]
    assert similarities[0, 0] == pytest.approx(2.0 / np.hypot(2.0, 0.1))


def test_neighbours_reject_large_k():
    with pytest.raises(ValueError, match="k=4"):
        retrieval.nearest_neighbours(np.ones((1, 2)), np.ones((3, 2)), k=4)


@pytest.fixture(scope="module")
def random_teacher():
    from sdn_tf.teacher import build_teacher

    return build_teacher(64, "random", "released_code")


def test_retrieve_training_image_first(random_teacher):
    rng = np.random.default_rng(3)
    gallery = rng.integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    indices, similarities = retrieval.retrieve(gallery[[4, 1]], gallery, random_teacher,
                                               "released_code", k=3)
    assert indices[:, 0].tolist() == [4, 1]
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-5)


def test_retrieval_figure_layout():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    indices = np.array([[0, 1, 2], [3, 2, 1]])
    figure = retrieval.draw_retrieval_figure(images[:2], images, indices,
                                             np.full((2, 3), 0.5), captions=["a", "b"])
    cell = retrieval.MIN_CELL
    assert figure.size == (4 * cell + 12, 2 * (cell + retrieval.TEXT_HEIGHT))
    # Row 2, neighbour 1 is gallery image 3, enlarged 2x with nearest sampling.
    pixel = figure.getpixel((12 + cell, cell + retrieval.TEXT_HEIGHT))
    assert pixel == tuple(images[3, 0, 0])


# --- A whole evaluation of a tiny exported model --------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Export a model trained one step on a tiny shapes build; return its paths and records."""
    from sdn_tf.data import shapes
    from sdn_tf.export import export
    from sdn_tf.text.train import train_text_encoder
    from sdn_tf.train import SDNConfig, train

    root = tmp_path_factory.mktemp("eval")
    data = shapes.build_shapes(root=root / "shapes", image_size=64, images_per_class_train=1,
                               images_per_class_test=1)
    train_records = shapes.load_shapes_split(data, "train")
    test_records = shapes.load_shapes_split(data, "test")
    common = dict(dataset="shapes", data_dir=data, image_size=64, teacher_weights="random",
                  max_steps=1, epochs=1, precision="float32", jit_compile="false")
    train_text_encoder(dict(common, workdir=str(root / "text"), embedding_dim=16,
                            batch_size=8), train_records, test_records)
    train(SDNConfig(workdir=str(root / "sdn"), text_encoder=str(root / "text"), batch_size=4,
                    **common), train_records, test_records)
    export(str(root / "sdn"), str(root / "export"))
    return {"root": root, "data": data, "export": str(root / "export"),
            "text": str(root / "text"), "train": train_records, "test": test_records}


@pytest.fixture(scope="module")
def evaluation(tiny_model):
    output = tiny_model["root"] / "metrics"
    config = evaluate_lib.EvalConfig(
        model_dir=tiny_model["export"], output_dir=str(output), dataset="shapes",
        inception_weights="random", workers=1, retrieval_figure=3)
    results = evaluate_lib.evaluate(config, records=tiny_model["test"],
                                    train_records=tiny_model["train"])
    return output, results


@pytest.mark.slow
def test_run_writes_files(evaluation):
    output, _ = evaluation
    for name in ("metrics.json", "metrics.md", "samples.png", "retrieval.png"):
        assert (output / name).is_file(), name


@pytest.mark.slow
def test_run_metrics_in_range(evaluation):
    _, results = evaluation
    metrics = results["metrics"]
    assert metrics["is"]["mean"] >= 1.0 - 1e-9
    assert metrics["is"]["splits"] == 10
    assert np.isfinite(metrics["fid"]["value"])
    assert -1.0 <= metrics["ssim"]["mean"] <= 1.0
    assert 0.0 < metrics["fsim"]["mean"] <= 1.0
    assert 0.0 < metrics["fsim"]["fsimc_mean"] <= 1.0
    assert 0.0 <= metrics["r_precision"]["value"] <= 1.0
    assert 0.0 <= metrics["r_precision"]["real_images"]["value"] <= 1.0


@pytest.mark.slow
def test_run_counts_every_caption(evaluation):
    _, results = evaluation
    assert results["num_captions"] == 80  # 8 test images with 10 captions each
    assert results["num_images"] == 80
    assert results["num_real_images"] == 8
    assert results["metrics"]["ssim"]["num_pairs"] == 80
    assert results["metrics"]["r_precision"]["num_mismatched"] == 70


@pytest.mark.slow
def test_run_json_records_settings(evaluation):
    output, results = evaluation
    stored = json.loads((output / "metrics.json").read_text())
    assert stored["settings"]["ssim"] == SSIM_SETTINGS
    assert stored["settings"]["fsim"] == json.loads(json.dumps(FSIM_SETTINGS))
    assert stored["settings"]["inception"]["splits"] == 10
    assert "random weights" in stored["settings"]["inception"]["weights"]
    assert "64x64" in stored["settings"]["real_images"]
    assert stored["model_info"]["image_size"] == 64
    assert stored["model_info"]["text_encoder"] == results["model_info"]["text_encoder"]
    assert set(stored["timings_seconds"]) >= {"generation", "inception", "ssim_fsim"}


@pytest.mark.slow
def test_run_colour_split_unseen(evaluation):
    _, results = evaluation
    colour = results["metrics"]["colour"]
    assert colour["all"]["count"] == 80
    assert colour["unseen"]["count"] == 80  # the shapes test split holds out every class
    assert colour["seen"] is None
    assert 0.0 <= colour["all"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_run_markdown_table(evaluation):
    output, _ = evaluation
    text = (output / "metrics.md").read_text()
    assert "| Dataset | IS | FID | SSIM | FSIM | R-precision |" in text
    assert "| shapes (test, this model) |" in text
    assert "| Colour accuracy | all | seen combinations | unseen combinations |" in text


@pytest.mark.slow
def test_r_precision_skipped_without_projection(tiny_model, tmp_path):
    from sdn_tf.text.train import PROJECTION_WEIGHTS_FILE

    text_dir = tmp_path / "text"
    shutil.copytree(tiny_model["text"], text_dir)
    os.remove(text_dir / PROJECTION_WEIGHTS_FILE)
    records = tiny_model["test"]
    items = evaluate_lib.select_captions(records, max_captions=4)
    result = evaluate_lib.encoder_r_precision(
        str(text_dir), np.zeros((4, 1, 64, 64, 3), np.uint8), np.zeros((8, 64, 64, 3), np.uint8),
        items, records, evaluate_lib._Teachers(), 99, 10, 8, 0)
    assert "skipped" in result
    assert PROJECTION_WEIGHTS_FILE in result["skipped"]


@pytest.mark.slow
def test_run_checks_teacher_features(evaluation):
    _, results = evaluation
    check = results["metrics"]["r_precision"]["feature_check"]
    assert check["compared_images"] == 8
    assert check["max_relative_difference"] < evaluate_lib.FEATURE_TOLERANCE


@pytest.mark.slow
def test_r_precision_skipped_for_other_teacher(tiny_model, tmp_path):
    from sdn_tf.data.pipeline import load_images
    from sdn_tf.text.train import FEATURE_CACHE_DIR

    # A text encoder whose cached features are twice the current teacher's
    # stands for one trained against another teacher.
    text_dir = tmp_path / "text"
    shutil.copytree(tiny_model["text"], text_dir)
    cache_path = text_dir / FEATURE_CACHE_DIR / "test.npz"
    with np.load(cache_path) as cache:
        names, features = cache["names"], cache["features"]
    np.savez(cache_path, names=names, features=features * 2.0)
    records = tiny_model["test"]
    items = evaluate_lib.select_captions(records, max_captions=16)
    real = load_images(records, 64)
    result = evaluate_lib.encoder_r_precision(
        str(text_dir), np.zeros((16, 1, 64, 64, 3), np.uint8), real, items, records,
        evaluate_lib._Teachers(), 99, 10, 8, 0, dataset="shapes", split="test", crop="none")
    assert "differ from those the text encoder" in result["skipped"]
    assert result["feature_check"]["compared_images"] == 8


@pytest.mark.slow
def test_more_images_than_model_raises(tiny_model):
    from sdn_tf.generate import load_model

    model, _ = load_model(tiny_model["export"])
    with pytest.raises(ValueError, match="images_per_caption=2"):
        evaluate_lib.generate_for_captions(model, ["a red circle"], images_per_caption=2)


def run_cli(*arguments):
    return subprocess.run([sys.executable, "-m", "sdn_tf.cli.evaluate", *arguments],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


@pytest.mark.slow
def test_cli_folder_quick_run(tiny_model, tmp_path):
    result = run_cli(f"--model={tiny_model['export']}", "--dataset=folder",
                     f"--data_dir={tiny_model['data']}", f"--output_dir={tmp_path}",
                     "--max_captions=12", "--skip=is,fid,r_precision", "--workers=1")
    assert result.returncode == 0, result.stderr[-3000:]
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["num_captions"] == 12
    assert stored["metrics"]["fid"] == {"skipped": "requested with --skip"}
    assert stored["metrics"]["colour"]["skipped"] == "only the shapes dataset has colour labels"
    assert "Generated images for 12/12 captions" in result.stderr


def test_cli_bad_skip_names_value(tmp_path):
    result = run_cli("--model=x", f"--output_dir={tmp_path}", "--skip=fid,bleu")
    assert result.returncode != 0
    assert "--skip" in result.stderr


def test_cli_missing_model_names_path(tmp_path):
    result = run_cli(f"--model={tmp_path / 'nothing'}", f"--output_dir={tmp_path}",
                     "--skip=is,fid")
    assert result.returncode != 0
    assert "saved_model.pb not found" in result.stderr

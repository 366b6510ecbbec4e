"""Ablation schemes: their loss terms against NumPy, their checks, and diverse synthesis
trained, exported and generated end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sdn_tf import losses as losses_lib
from sdn_tf import schemes
from sdn_tf.data.records import ImageRecord
from sdn_tf.teacher import TAP_NAMES

BATCH = 3


def random_taps(rng):
    return {tap: rng.normal(size=(BATCH, 2, 2, 3 + i % 4)).astype(np.float32)
            for i, tap in enumerate(TAP_NAMES)}


def make_inputs(seed, num_images=1):
    rng = np.random.default_rng(seed)
    real = rng.uniform(0, 255, (BATCH, 4, 4, 3)).astype(np.float32)
    fakes = [rng.uniform(0, 255, (BATCH, 4, 4, 3)).astype(np.float32)
             for _ in range(num_images)]
    return real, random_taps(rng), fakes, random_taps(rng), [random_taps(rng)
                                                             for _ in range(num_images)]


def numpy_l1(a, b):
    return np.abs(a - b).reshape(len(a), -1).mean(axis=1)


def numpy_loss(real, real_taps, fakes, g_taps, fake_taps, stage1, stage2):
    """Eq. 1-5 written out: Stage-I taps outside the minimum, image and Stage-II inside."""
    stage1_sum = np.zeros(BATCH)
    if stage1:
        stage1_sum = sum(numpy_l1(real_taps[tap], g_taps[tap]) for tap in TAP_NAMES)
    per_image = []
    for k, fake in enumerate(fakes):
        value = numpy_l1(real, fake)
        if stage2:
            value = value + sum(numpy_l1(real_taps[tap], fake_taps[k][tap])
                                for tap in TAP_NAMES)
        per_image.append(value)
    return np.mean(stage1_sum + np.min(np.stack(per_image), axis=0))


# scheme, stage, num_images, and whether the loss has the Stage-I and Stage-II tap sums.
CASES = [
    ("image_only", 1, 1, False, False),
    ("stage1", 1, 1, True, False),
    ("stage2", 2, 1, False, True),
    ("stage1_plus_stage2", 1, 1, True, True),
    ("sdn", 1, 1, True, False),
    ("sdn", 2, 1, False, True),
    ("diverse", 1, 2, True, False),
    ("diverse", 2, 2, False, True),
]


@pytest.mark.parametrize("scheme, stage, num_images, stage1, stage2", CASES)
def test_scheme_loss_keys(scheme, stage, num_images, stage1, stage2):
    real, real_taps, fakes, g_taps, fake_taps = make_inputs(1, num_images)
    terms = schemes.scheme_terms(scheme, stage)
    result = losses_lib.sdn_loss(real, real_taps, fakes, terms, g_taps, fake_taps)
    assert {"loss", "image"} <= set(result)
    assert ("stage1_taps" in result) == stage1
    assert ("stage2_taps" in result) == stage2
    assert ("stage1/pool5" in result) == stage1
    assert ("stage2/conv1_1" in result) == stage2


@pytest.mark.parametrize("scheme, stage, num_images, stage1, stage2", CASES)
def test_scheme_loss_matches_numpy(scheme, stage, num_images, stage1, stage2):
    real, real_taps, fakes, g_taps, fake_taps = make_inputs(2, num_images)
    terms = schemes.scheme_terms(scheme, stage)
    result = losses_lib.sdn_loss(real, real_taps, fakes, terms, g_taps, fake_taps)
    expected = numpy_loss(real, real_taps, fakes, g_taps, fake_taps, stage1, stage2)
    np.testing.assert_allclose(result["loss"].numpy(), expected, rtol=1e-5)


def test_image_only_is_image_term():
    real, real_taps, fakes, g_taps, fake_taps = make_inputs(3)
    result = losses_lib.sdn_loss(real, real_taps, fakes,
                                 schemes.scheme_terms("image_only", 2), g_taps, fake_taps)
    np.testing.assert_allclose(result["loss"].numpy(), np.abs(real - fakes[0]).mean(),
                               rtol=1e-5)


def test_summed_is_sum_of_stages():
    # Stage-I + Stage-II counts the image term once, so summed = S1 + S2 - image.
    real, real_taps, fakes, g_taps, fake_taps = make_inputs(4)
    values = {name: losses_lib.sdn_loss(real, real_taps, fakes, terms, g_taps,
                                        fake_taps)["loss"].numpy()
              for name, terms in (("summed", schemes.scheme_terms("stage1_plus_stage2", 1)),
                                  ("stage1", schemes.scheme_terms("stage1", 1)),
                                  ("stage2", schemes.scheme_terms("stage2", 2)))}
    image = np.abs(real - fakes[0]).mean()
    np.testing.assert_allclose(values["summed"], values["stage1"] + values["stage2"] - image,
                               rtol=1e-5)


def test_fixed_scheme_ignores_stage_argument():
    assert schemes.scheme_terms("stage2", 1) == schemes.scheme_terms("stage2", 2)
    assert schemes.scheme_terms("stage1", 2).generator_taps


def test_tap_weights_passed_through():
    terms = schemes.scheme_terms("stage1_plus_stage2", 1, {"pool5": 2.0}, image_weight=0.5)
    assert terms.weight("pool5") == 2.0
    assert terms.weight("conv1_1") == 1.0
    assert terms.image_weight == 0.5


def test_unknown_scheme_rejected():
    with pytest.raises(ValueError, match="--scheme='stage3'"):
        schemes.scheme_terms("stage3", 1)
    with pytest.raises(ValueError, match="use one of"):
        schemes.check_scheme("stage3", 1)


def test_diverse_needs_several_images():
    with pytest.raises(ValueError, match="--num_images=1.*--num_images=2"):
        schemes.check_scheme("diverse", 1, num_images=1)
    schemes.check_scheme("diverse", 2, num_images=2)


def test_stage2_scheme_rejects_init_from():
    with pytest.raises(ValueError, match="from scratch.*--scheme=sdn --stage=2"):
        schemes.check_scheme("stage2", 2, init_from="runs/stage1")


def test_fixed_stage_conflict_rejected():
    with pytest.raises(ValueError, match="--stage=2"):
        schemes.check_scheme("stage1", 2)
    with pytest.raises(ValueError, match="--stage=1"):
        schemes.check_scheme("stage2", 1)


def test_image_only_needs_image_weight():
    with pytest.raises(ValueError, match="--image_weight=0"):
        schemes.check_scheme("image_only", 1, image_weight=0.0)


def test_default_stage():
    assert schemes.default_stage("stage2", 1) == 2
    assert schemes.default_stage("stage1", 2) == 1
    assert schemes.default_stage("sdn", 2) == 2


def test_old_workdir_gets_default_scheme(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "sdn", "stage": 1}))
    assert schemes.record_default_scheme(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["scheme"] == "sdn"
    assert not schemes.record_default_scheme(str(tmp_path))


def test_text_workdir_left_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "text_encoder"}))
    assert not schemes.record_default_scheme(str(tmp_path))
    assert "scheme" not in json.loads((tmp_path / "config.json").read_text())


def run_train_cli(*args):
    return subprocess.run([sys.executable, "-m", "sdn_tf.cli.train", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("flags, expected", [
    (["--scheme=diverse"], "--num_images=1"),
    (["--scheme=bogus"], "--scheme"),
    (["--scheme=stage2", "--init_from=runs/stage1"], "from scratch"),
])
def test_cli_rejects_bad_scheme(tmp_path, flags, expected):
    result = run_train_cli(f"--workdir={tmp_path / 'run'}", *flags)
    assert result.returncode != 0
    assert expected in result.stderr
    assert not (tmp_path / "run").exists()


# --- Training with schemes, and diverse synthesis end to end --------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, write_text_encoder):
    root = tmp_path_factory.mktemp("schemes")
    rng = np.random.default_rng(0)
    records = []
    for index in range(4):
        path = root / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(name=f"image{index}", image_path=str(path),
                                   captions=[f"a red square {index}", "a blue circle"],
                                   class_id=index % 2))
    return {"root": root, "records": records,
            "text": write_text_encoder(root / "text")}


def sdn_config(workdir, text_encoder, **overrides):
    from sdn_tf.train import SDNConfig

    settings = dict(workdir=str(workdir), text_encoder=text_encoder, teacher_weights="random",
                    batch_size=4, epochs=10, max_steps=2, log_every=1, checkpoint_every=2,
                    sample_every=2, precision="float32", jit_compile="false")
    settings.update(overrides)
    return SDNConfig(**settings)


@pytest.mark.slow
def test_scheme_recorded_and_must_match(tmp_path, tiny_data):
    from sdn_tf import workdir as workdir_lib
    from sdn_tf.train import train

    config = sdn_config(tmp_path / "run", tiny_data["text"], scheme="image_only", max_steps=1)
    losses = train(config, tiny_data["records"], tiny_data["records"][:2])
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["scheme"] == "image_only"
    assert "stage1_taps" not in losses and "stage2_taps" not in losses
    with pytest.raises(workdir_lib.WorkdirError, match="scheme='image_only'.*scheme='stage1'"):
        train(sdn_config(tmp_path / "run", tiny_data["text"], scheme="stage1"),
              tiny_data["records"], tiny_data["records"][:2])


@pytest.fixture(scope="module")
def diverse_export(tiny_data):
    from sdn_tf.export import export
    from sdn_tf.train import train

    root = tiny_data["root"]
    losses = train(sdn_config(root / "diverse", tiny_data["text"], scheme="diverse",
                              num_images=2),
                   tiny_data["records"], tiny_data["records"][:2])
    export(str(root / "diverse"), str(root / "diverse_export"))
    return {"export": str(root / "diverse_export"), "losses": losses}


@pytest.mark.slow
def test_diverse_train_reports_stage1(diverse_export):
    assert np.isfinite(diverse_export["losses"]["loss"])
    assert "stage1_taps" in diverse_export["losses"]


@pytest.mark.slow
def test_diverse_export_all_images_shape(diverse_export):
    from sdn_tf.generate import generate_images, load_model

    model, info = load_model(diverse_export["export"])
    images = generate_images(model, ["a red square", "a blue circle", "x"])
    assert images.shape == (3, 2, 64, 64, 3)
    assert images.dtype == np.uint8
    assert info["num_images"] == 2


@pytest.mark.slow
def test_diverse_generate_writes_two_pngs(tmp_path, diverse_export):
    output = tmp_path / "generated"
    result = subprocess.run(
        [sys.executable, "-m", "sdn_tf.cli.generate", f"--model={diverse_export['export']}",
         "--captions=a red square", "--captions=a blue circle", f"--output_dir={output}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    names = sorted(path.name for path in output.glob("*.png") if path.name[0].isdigit())
    assert names == ["0001_1.png", "0001_2.png", "0002_1.png", "0002_2.png"]

"""tools/benchmark.py: policy and size parsing, FLOP counts, targets and the table."""

import json
import pathlib
import subprocess
import sys

import pytest

from sdn_tf.text.encoder import build_text_encoder

TOOL_FILE = pathlib.Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("benchmark")


def row(model, policy, examples, tflops=1.0, memory=2 ** 30, size=224):
    return {"model": model, "image_size": size, "policy": policy, "batch_size": 12,
            "timed_steps": 1, "examples_per_second": examples, "tflops_per_second": tflops,
            "peak_memory_bytes": memory}


def test_parse_policy_with_xla(tool):
    assert tool.parse_policy("mixed_bfloat16+xla") == ("mixed_bfloat16", True)
    assert tool.parse_policy("float32") == ("float32", False)


@pytest.mark.parametrize("name", ["float64", "float32+jit", "bf16"])
def test_parse_policy_rejects_unknown(tool, name):
    with pytest.raises(ValueError, match=name.replace("+", r"\+")):
        tool.parse_policy(name)


def test_parse_sizes_sorted(tool):
    assert tool.parse_sizes(["224", "64", "64"]) == [64, 224]


@pytest.mark.parametrize("value", ["100", "32", "256", "big"])
def test_parse_sizes_rejects_invalid(tool, value):
    with pytest.raises(ValueError, match=value):
        tool.parse_sizes([value])


def test_text_encoder_flops(tool):
    model = build_text_encoder(1024)
    # conv1: 198 steps x 4 x 70 x 384; conv2: 63 x 4 x 384 x 512; conv3: 18 x 4 x 512 x 512;
    # GRU: 8 steps x 3 gates x (512 x 512 + 512 x 512); dense 512 x 1024; 2 FLOPs per MAC.
    expected = 2 * (198 * 4 * 70 * 384 + 63 * 4 * 384 * 512 + 18 * 4 * 512 * 512
                    + 8 * 3 * (512 * 512 + 512 * 512) + 512 * 1024)
    assert tool.text_encoder_flops(model, 1) == expected
    assert tool.text_encoder_flops(model, 12) == 12 * expected


def test_targets_speedup_and_fraction(tool):
    rows = [row("stage2", "float32", 1.0, tflops=0.1), row("stage2", "mixed_bfloat16", 3.0,
                                                            tflops=0.3, memory=3 * 2 ** 30),
            row("vgg19_forward", "mixed_bfloat16", 10.0, tflops=1.2)]
    targets = tool.summarise_targets(rows, ["float32", "mixed_bfloat16"], [224])
    assert targets["best_policy"] == "mixed_bfloat16"
    assert targets["speedup_over_float32"] == pytest.approx(3.0)
    assert targets["peak_memory_gib"] == pytest.approx(3.0)
    assert targets["tflops_fraction_of_vgg19_bf16_forward"] == pytest.approx(0.25)


def test_fresh_session_keeps_the_policy(tool):
    import keras

    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        keras.backend.clear_session()
        # The trap fresh_session avoids: clear_session alone falls back to float32.
        assert keras.mixed_precision.global_policy().name == "float32"
        tool.fresh_session("mixed_bfloat16")
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_plain_float32_is_baseline(tool):
    assert tool.parse_policy("float32+plain") == ("float32", False)
    rows = [row("stage2", "float32+plain", 1.0), row("stage2", "float32", 1.5),
            row("stage2", "mixed_bfloat16", 4.0)]
    targets = tool.summarise_targets(rows, ["float32+plain", "float32", "mixed_bfloat16"],
                                     [224])
    assert targets["baseline_policy"] == "float32+plain"
    assert targets["best_policy"] == "mixed_bfloat16"
    assert targets["speedup_over_float32"] == pytest.approx(4.0)


def test_targets_without_baseline(tool):
    targets = tool.summarise_targets([row("stage2", "mixed_bfloat16", 3.0)],
                                     ["mixed_bfloat16"], [224])
    assert "note" in targets


def test_markdown_table_row(tool):
    table = tool.markdown_table([row("text", "float32", 24.25, tflops=0.005, size=None)])
    assert "| text | - | float32 | 24.25 | 0.005 | 1.00 | 1 |" in table


def test_cli_rejects_bad_size(tmp_path):
    result = subprocess.run(
        [sys.executable, str(TOOL_FILE), "--image_sizes=100", f"--output={tmp_path}/b.json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    assert "Invalid --image_sizes entry 100" in result.stderr


def test_time_step_parts_reports_each_part(run_tool):
    """tools/time_step_parts.py times five parts and prints them as JSON."""
    result = run_tool("time_step_parts", "--image_size=64", "--batch_size=1", "--repeats=2",
                      "--precision=mixed_bfloat16")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["image_size"] == 64
    assert set(summary["seconds"]) == {
        "teacher forward", "teacher forward + input gradient", "generator forward",
        "generator forward + weight gradients",
        "generator forward + weight gradients, native kernel gradients"}
    assert all(seconds > 0 for seconds in summary["seconds"].values())


def test_time_step_parts_rejects_bad_size(run_tool):
    result = run_tool("time_step_parts", "--image_size=100")
    assert result.returncode != 0
    assert "--image_size must be a multiple of 32" in result.stderr


def test_text_step_fused_and_plain(run_tool, tmp_path):
    """The text rows time sdn-train-text's step, with and without the XLA-compiled update."""
    output = tmp_path / "text.json"
    result = run_tool("benchmark", "--models=text", "--policies=float32+plain,float32",
                      "--batch_size=4", "--warmup=1", "--steps=1", "--text_feature_grid=2",
                      f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["errors"] == {}
    assert report["flags"]["text_feature_grid"] == 2
    rows = {row["policy"]: row for row in report["rows"] if row["model"] == "text"}
    assert set(rows) == {"float32+plain", "float32"}
    for text_row in rows.values():
        assert text_row["examples_per_second"] > 0
        assert text_row["tflops_per_second"] > 0

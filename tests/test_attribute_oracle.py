"""tools/attribute_oracle.py: attribute codes in place of caption embeddings."""

import dataclasses
import json

import numpy as np
import pytest

@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("attribute_oracle")


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    from sdn_tf.data import shapes

    data = shapes.build_shapes(root=tmp_path_factory.mktemp("oracle") / "shapes", image_size=64,
                               images_per_class_train=1, images_per_class_test=1)
    return shapes.load_shapes_split(data, "train"), shapes.load_shapes_split(data, "test")


def test_codes_are_one_hot_per_attribute(tool, tiny_shapes):
    train, test = tiny_shapes
    values = tool.attribute_values(train + test)
    coded = tool.with_attribute_embeddings(train, values)
    width = sum(len(values[name]) for name in tool.ATTRIBUTES)
    first = coded[0]
    assert first.embeddings.shape == (len(first.captions), width)
    assert np.all(first.embeddings.sum(axis=1) == len(tool.ATTRIBUTES))
    colour_slot = values["colour"].index(first.attributes["colour"])
    assert first.embeddings[0, colour_slot] == 1.0
    # Two images of different colours get different codes.
    other = next(r for r in coded if r.attributes["colour"] != first.attributes["colour"])
    assert not np.array_equal(other.embeddings[0], first.embeddings[0])


def test_unknown_attribute_value_rejected(tool, tiny_shapes):
    train, _ = tiny_shapes
    values = tool.attribute_values(train)
    odd = dataclasses.replace(train[0], attributes=dict(train[0].attributes, colour="teal"))
    with pytest.raises(ValueError, match="colour='teal'"):
        tool.attribute_code(odd, values)


def test_run_writes_colour_scores(tool, tiny_shapes, tmp_path):
    train, test = tiny_shapes
    results = tool.run_oracle(str(tmp_path / "run"), train, test, max_images=5, max_steps=2,
                              image_size=64, batch_size=4, precision="float32",
                              jit_compile="false")
    written = json.loads((tmp_path / "run" / "oracle_colour.json").read_text())
    assert written["steps"] == 2
    assert written["seen"]["count"] == 5
    assert written["unseen"]["count"] == min(5, len(test))
    assert 0.0 <= results["unseen"]["accuracy"] <= 1.0
    assert written["code_layout"]["colour"] == sorted({r.attributes["colour"] for r in train + test})


def test_stage2_run_records_stage(tool, tiny_shapes, tmp_path):
    train, test = tiny_shapes
    tool.run_oracle(str(tmp_path / "run"), train, test, max_images=3, max_steps=2, stage=2,
                    image_size=64, batch_size=4, precision="float32", jit_compile="false")
    written = json.loads((tmp_path / "run" / "oracle_colour.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["stage"] == 2
    assert config["stage"] == 2
    assert written["seen"]["count"] == 3

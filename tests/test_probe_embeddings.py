"""tools/probe_embeddings.py: linear probes and variance shares on known embeddings."""


import numpy as np
import pytest

@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("probe_embeddings")


def _labels(rng, count, values):
    return np.asarray(values)[rng.integers(len(values), size=count)]


def test_probe_reads_encoded_attribute(tool):
    rng = np.random.default_rng(0)
    colours = ("red", "green", "blue")
    train_labels = _labels(rng, 300, colours)
    test_labels = _labels(rng, 100, colours)
    directions = rng.normal(size=(3, 16))

    def embed(labels):
        codes = directions[[colours.index(label) for label in labels]]
        return codes + 0.1 * rng.normal(size=codes.shape)

    train_accuracy, test_accuracy = tool.linear_probe(embed(train_labels), train_labels,
                                                      embed(test_labels), test_labels)
    assert train_accuracy == 1.0
    assert test_accuracy == 1.0


def test_probe_near_chance_on_noise(tool):
    rng = np.random.default_rng(1)
    values = tuple("abcdefgh")
    train_labels = _labels(rng, 400, values)
    test_labels = _labels(rng, 400, values)
    _, test_accuracy = tool.linear_probe(rng.normal(size=(400, 8)), train_labels,
                                         rng.normal(size=(400, 8)), test_labels)
    assert test_accuracy < 0.3


def test_between_group_share(tool):
    # Two groups at -1 and +1 on one axis, no spread inside: all variance is between.
    embeddings = np.array([[-1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = np.array(["a", "a", "b", "b"])
    assert tool.between_group_share(embeddings, labels) == pytest.approx(1.0)
    # Groups with equal means explain none of it.
    mixed = np.array(["a", "b", "a", "b"])
    assert tool.between_group_share(embeddings, mixed) == pytest.approx(0.0)


def test_constant_embeddings_rejected(tool):
    with pytest.raises(ValueError, match="do not vary"):
        tool.between_group_share(np.ones((3, 2)), np.array(["a", "b", "a"]))


def test_probe_reports_every_attribute(tool):
    rng = np.random.default_rng(2)
    attributes = [{name: f"v{rng.integers(2)}" for name in tool.ATTRIBUTES} for _ in range(40)]
    embeddings = rng.normal(size=(40, 4))
    results = tool.probe(embeddings, attributes, embeddings, attributes)
    assert set(results) == set(tool.ATTRIBUTES)
    for row in results.values():
        assert set(row) == {"train_accuracy", "test_accuracy", "between_group_share"}

"""Installs sdn_tf, a TensorFlow 2 / Keras 3 reproduction of Symmetrical Distillation Networks."""

from setuptools import find_packages, setup

setup(
    name="sdn_tf",
    version="0.1.0",
    description=(
        "Symmetrical Distillation Networks (Yuan & Peng, ACM MM 2018) for "
        "text-to-image synthesis in TensorFlow 2 and Keras 3"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sdn_tf", "sdn_tf.*"]),
    install_requires=[
        "tensorflow>=2.16,<3",
        "keras>=3.3",
        "tensorflow-datasets>=4.9",
        "tensorflow-hub>=0.16",
        "numpy>=1.24",
        "pillow>=10",
        "scikit-image>=0.22",
        "absl-py>=1.4",
        "tensorboard>=2.16",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2"],
    },
    entry_points={
        "console_scripts": [
            "sdn-train-text=sdn_tf.cli.train_text:run",
            "sdn-train=sdn_tf.cli.train:run",
            "sdn-export=sdn_tf.cli.export:run",
            "sdn-generate=sdn_tf.cli.generate:run",
            "sdn-eval=sdn_tf.cli.evaluate:run",
        ]
    },
)

"""sdn_tf: Symmetrical Distillation Networks for text-to-image synthesis."""

__version__ = "0.1.0"

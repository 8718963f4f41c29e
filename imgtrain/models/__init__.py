"""Models: local small nets and any timm architecture, local weights, transfer learning helpers."""
from .registry import create_model, is_local, list_models, register_model
from . import small  # noqa: F401  (registers mlp, simple_cnn, convmixer, airbench, keras_cnn_*)
from .pretrained import WeightsMismatchError, data_config, load_pretrained
from .transfer import apply_transfer, block_groups, freeze_backbone, param_groups, reinit, set_phase

__all__ = [
    "create_model", "list_models", "register_model", "is_local", "load_pretrained", "data_config",
    "WeightsMismatchError", "apply_transfer", "param_groups", "freeze_backbone", "reinit", "block_groups",
    "set_phase",
]

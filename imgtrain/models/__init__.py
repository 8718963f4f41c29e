"""Models: local small nets and any timm architecture, local weights, transfer learning helpers.

Importing this package imports no torch or timm: each name below is imported from its module on first
use (`__getattr__`). The registry (`create_model`, `is_local`, `list_models`, `check_name`) needs both,
since the local nets it knows register themselves when small.py (torch, timm) is imported; importing
registry.py imports small.py. A torch-free model-name check is imgtrain.sweep.preflight.model_problem.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from imgtrain.lazy import lazy_exports

if TYPE_CHECKING:
    from .pretrained import WeightsMismatchError, data_config, load_pretrained
    from .registry import create_model, is_local, list_models, register_model
    from .transfer import apply_transfer, block_groups, freeze_backbone, param_groups, reinit, set_phase

# exported name -> the submodule that defines it, imported when the name is first used (PEP 562)
_LAZY = {
    "create_model": "registry", "list_models": "registry", "register_model": "registry", "is_local": "registry",
    "load_pretrained": "pretrained", "data_config": "pretrained", "WeightsMismatchError": "pretrained",
    "apply_transfer": "transfer", "param_groups": "transfer", "freeze_backbone": "transfer", "reinit": "transfer",
    "block_groups": "transfer", "set_phase": "transfer",
}
_SUBMODULES = frozenset({"heads", "pretrained", "registry", "small", "transfer"})

__all__ = [
    "create_model", "list_models", "register_model", "is_local", "load_pretrained", "data_config",
    "WeightsMismatchError", "apply_transfer", "param_groups", "freeze_backbone", "reinit", "block_groups",
    "set_phase",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY, _SUBMODULES)

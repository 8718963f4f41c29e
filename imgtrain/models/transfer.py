"""Transfer learning on a built model: re-initialise, freeze, and optimizer parameter groups.

Blocks for `unfreeze_last` are timm's coarse `group_matcher` groups, which every timm model and our
local nets define: the stem, then stages (CNNs) or transformer blocks (ViT, with the final norm), then
unmatched layers before the classifier (e.g. VGG's pre-logits MLP) as the last group. A model without a
`group_matcher` falls back to the children of its first `blocks`/`stages`/`layers`/`features`
Sequential or ModuleList (shallowest first). Layer decay numbers layers with the fine group_matcher,
as timm does. Frozen BatchNorm layers use their stored statistics; dropout in frozen parts stays active.

`model.reinit_init` chooses how `model.reinit` draws the new values (PyTorch's default, Torch7's uniform,
Keras's Glorot); `model.wd_groups` gives chosen parameters their own weight decay (Keras's per-layer L2 is
weight_decay = 2 x lambda with the coupled optimizers, see `param_groups`).

Frozen then unfrozen (`model.unfreeze_at_epoch`, Keras's "train the head, then fine-tune"): the phase is a
function of the epoch (`set_phase`), so a run resumed in either phase rebuilds it; every parameter is in
the optimizer from the start (frozen ones get no gradient, which torch optimizers skip, weight decay
included), so the optimizer's parameter set and its checkpoint never change shape.
"""
from __future__ import annotations

import fnmatch
import logging
import math

import torch
import torch.nn as nn
from timm.models import group_parameters

from imgtrain.config import ConfigError, ModelConfig, OptimConfig

from .pretrained import classifier_names

log = logging.getLogger(__name__)

_BLOCK_CONTAINERS = ("blocks", "stages", "layers", "features")


def apply_transfer(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Apply `model.reinit`, then `model.freeze_backbone`/`unfreeze_last`. Call after load_pretrained."""
    if cfg.reinit:
        reinit(model, cfg.reinit, cfg.reinit_init)
    if cfg.unfreeze_at_epoch is not None:
        if not cfg.freeze_backbone:
            raise ConfigError("model.unfreeze_at_epoch ends a frozen phase: it needs model.freeze_backbone=true")
        if cfg.unfreeze_at_epoch < 1:
            raise ConfigError(f"model.unfreeze_at_epoch must be at least 1 (epochs trained frozen), "
                              f"got {cfg.unfreeze_at_epoch}; for no frozen phase leave freeze_backbone false")
    if cfg.freeze_backbone:
        freeze_backbone(model, cfg.unfreeze_last)
    elif cfg.unfreeze_last:
        raise ConfigError("model.unfreeze_last only applies with model.freeze_backbone=true")
    return model


@torch.no_grad()
def torch7_uniform_(module: nn.Module) -> None:
    """Torch7's `reset()` of nn.Linear / nn.SpatialConvolution (Caffe models loaded in Torch7, as S002's
    VGG-19): weight and bias ~ U(-s, s), s = 1/sqrt(fan_in), fan_in = in_features or in_channels/groups x
    kernel area. PyTorch's own Conv/Linear reset_parameters draws from the same distribution (kaiming_uniform
    with a=sqrt(5) has bound 1/sqrt(fan_in)); this one does not depend on PyTorch's choice."""
    fan_in = module.weight[0].numel()
    s = 1.0 / math.sqrt(fan_in)
    module.weight.uniform_(-s, s)
    if module.bias is not None:
        module.bias.uniform_(-s, s)


_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


def _reset(sub: nn.Module, init: str) -> bool:
    """Re-initialise `sub`'s own parameters; False if it has no way to."""
    if init != "default" and isinstance(sub, _WEIGHTED):
        if init == "uniform":
            torch7_uniform_(sub)
        else:  # glorot_uniform: Keras's default
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        return True
    if hasattr(sub, "reset_parameters"):
        sub.reset_parameters()
        return True
    return False


def reinit(model: nn.Module, patterns: list[str], init: str = "default") -> list[str]:
    """Re-initialise the parameters of modules whose name matches a pattern (fnmatch).

    `init` (model.reinit_init): "default" = each module's own `reset_parameters` (PyTorch's init);
    "uniform" = Torch7's reset() for Linear/Conv layers (`torch7_uniform_`: S002's "muestras de la
    distribución uniforme", whose bounds the study does not state); "glorot_uniform" = Keras's Glorot-uniform
    kernels and zero biases for Linear/Conv. Other modules (norms) always use their reset_parameters.
    Returns the matched module names (outermost only).
    """
    if init not in ModelConfig.REINIT_INITS:
        raise ConfigError(f"model.reinit_init: {init!r} is not one of {', '.join(ModelConfig.REINIT_INITS)}")
    named = [(n, m) for n, m in model.named_modules() if n]
    matched = []
    for pat in patterns:
        hits = [n for n, _ in named if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            top = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"model.reinit: '{pat}' matches no module (top-level modules: {top})")
        matched += [n for n in hits if n not in matched]
    # only the outermost matches; their submodules are reset with them
    outer = [n for n in matched if not any(n.startswith(o + ".") for o in matched)]
    untouched = 0
    for name in outer:
        module = model.get_submodule(name)
        covered = set()
        for sub in module.modules():
            if _reset(sub, init):
                covered.update(id(p) for p in sub.parameters())
        untouched += sum(1 for p in module.parameters() if id(p) not in covered)
    if untouched:
        log.warning("model.reinit: %d parameter tensors have no reset_parameters and keep their values", untouched)
    log.info("re-initialised (%s) %s", init, ", ".join(outer))
    return outer


def _is_head(name: str, heads: list[str]) -> bool:
    return any(name.startswith(h + ".") for h in heads)


def block_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per block, first to last, classifier excluded (see the module docstring)."""
    heads = classifier_names(model)
    if hasattr(model, "group_matcher"):
        groups = group_parameters(model, model.group_matcher(coarse=True))
        ordered = [[n for n in groups[k] if not _is_head(n, heads)] for k in sorted(groups)]
        return [g for g in ordered if g]
    for name, module in sorted(model.named_modules(), key=lambda nm: nm[0].count(".")):
        if name.rsplit(".", 1)[-1] in _BLOCK_CONTAINERS and isinstance(module, (nn.Sequential, nn.ModuleList)):
            out = [[f"{name}.{c}.{p}" for p, _ in child.named_parameters()] for c, child in module.named_children()]
            return [g for g in out if g]
    raise ConfigError(f"{type(model).__name__} has no group_matcher nor a blocks/stages/layers/features sequence; "
                      "model.unfreeze_last cannot find its blocks")


def _eval_mode_hook(module: nn.Module, args) -> None:
    # A frozen BatchNorm normalises with its stored statistics and never updates them, even in train().
    module.training = False


_HOOKS = "_imgtrain_frozen_bn_hooks"  # model attribute: the eval-mode hooks of the frozen BatchNorms


def is_frozen(model: nn.Module) -> bool:
    return getattr(model, _HOOKS, None) is not None


def unfreeze(model: nn.Module) -> None:
    """Undo freeze_backbone: every parameter trains, BatchNorms follow train()/eval() again."""
    for handle in getattr(model, _HOOKS, None) or []:
        handle.remove()
    setattr(model, _HOOKS, None)
    for p in model.parameters():
        p.requires_grad = True


def set_phase(model: nn.Module, cfg: ModelConfig, epoch: int) -> bool:
    """Frozen before `cfg.unfreeze_at_epoch`, unfrozen from it on; True when this call changed the model.
    Does nothing without model.unfreeze_at_epoch."""
    if cfg.unfreeze_at_epoch is None:
        return False
    frozen = epoch < cfg.unfreeze_at_epoch
    if frozen == is_frozen(model):
        return False
    if frozen:
        freeze_backbone(model, cfg.unfreeze_last)
    else:
        unfreeze(model)
        log.info("epoch %d: backbone unfrozen (model.unfreeze_at_epoch=%d)", epoch, cfg.unfreeze_at_epoch)
    return True


def freeze_backbone(model: nn.Module, unfreeze_last: int = 0) -> list[str]:
    """Only the classifier (and the last `unfreeze_last` blocks) keeps requires_grad; BatchNorm layers
    whose parameters are all frozen run in eval mode. Returns the trainable parameter names."""
    if not hasattr(model, "get_classifier"):
        raise ConfigError(f"{type(model).__name__} has no get_classifier(); model.freeze_backbone needs one")
    heads = classifier_names(model)
    trainable = {n for n, _ in model.named_parameters() if _is_head(n, heads)}
    if unfreeze_last > 0:
        for group in block_groups(model)[-unfreeze_last:]:
            trainable.update(group)
    for n, p in model.named_parameters():
        p.requires_grad = n in trainable
    for handle in getattr(model, _HOOKS, None) or []:  # freezing twice: one hook per BatchNorm
        handle.remove()
    hooks = []
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            hooks.append(m.register_forward_pre_hook(_eval_mode_hook))
    setattr(model, _HOOKS, hooks)
    if not trainable:
        raise ConfigError("model.freeze_backbone left nothing to train (the model has no classifier parameters)")
    log.info("freeze_backbone: %d of %d parameter tensors train", len(trainable), len(list(model.parameters())))
    return sorted(trainable)


def _layer_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """timm's layer-wise decay: the lr of layer i (of n, from timm's fine group_matcher) is scaled by
    layer_decay ** (n - 1 - i); the classifier and other unmatched layers keep scale 1."""
    if not hasattr(model, "group_matcher"):
        raise ConfigError(f"model.layer_decay: {type(model).__name__} has no group_matcher to number its layers")
    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    last = max(layer_of.values())
    return {n: layer_decay ** (last - i) for n, i in layer_of.items()}


def param_groups(model: nn.Module, optim_cfg: OptimConfig, model_cfg: ModelConfig) -> list[dict]:
    """Optimizer parameter groups over the trainable parameters.

    - weight decay: 0 for 1-D tensors (norms, biases) and the model's `no_weight_decay()` names (ViT
      position embedding, class token), unless `optim.decay_norm_and_bias` (then everything decays);
    - `model.wd_groups` (fnmatch pattern -> weight decay, first match wins) sets the weight decay of the
      parameters it matches, in place of both rules above: e.g. {"pre_logits.fc.weight": 2e-3} is Keras's
      `kernel_regularizer=l2(1e-3)` on that Dense layer alone, with optim.weight_decay 0 for the rest.
      Keras L2(l) adds l * ||w||^2 to the loss, whose gradient is 2 l w: with the optimizers that add
      weight_decay * w to the gradient (torch SGD, Adam, RMSprop: classic, coupled L2) the equivalent is
      weight_decay = 2 l. AdamW (and other decoupled-decay optimizers) shrink the weights outside the
      adaptive step: no Keras L2 equivalent there;
    - lr_scale = layer-decay scale (`model.layer_decay`) x the first matching `model.lr_groups`
      multiplier (fnmatch on parameter names; unmatched: 1).
    Each group: params, param_names, weight_decay, lr_scale, name. The engine multiplies lr by lr_scale.
    With `model.unfreeze_at_epoch` the frozen parameters are in the groups too (they train later).
    """
    all_names = [n for n, _ in model.named_parameters()]
    patterns = list(model_cfg.lr_groups.items())
    wd_patterns = list(model_cfg.wd_groups.items())
    for key, pats in (("lr_groups", patterns), ("wd_groups", wd_patterns)):
        for pat, _ in pats:
            if not any(fnmatch.fnmatchcase(n, pat) for n in all_names):
                raise ConfigError(f"model.{key}: '{pat}' matches no parameter (e.g. {', '.join(all_names[:3])}, ...)")
        for pat, value in pats:
            if value < 0:
                raise ConfigError(f"model.{key}: '{pat}' -> {value}, a negative value")
    scales = _layer_scales(model, model_cfg.layer_decay) if model_cfg.layer_decay is not None else {}
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()

    groups: dict[tuple, dict] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad and model_cfg.unfreeze_at_epoch is None:
            continue
        no_decay = not optim_cfg.decay_norm_and_bias and (
            p.ndim <= 1 or n in skip or any(n.startswith(s + ".") for s in skip))
        pat = next((pat for pat, _ in patterns if fnmatch.fnmatchcase(n, pat)), None)
        wd_pat = next((pat for pat, _ in wd_patterns if fnmatch.fnmatchcase(n, pat)), None)
        layer_scale = scales.get(n, 1.0)
        key = (layer_scale, pat, wd_pat, no_decay if wd_pat is None else None)
        if key not in groups:
            parts = ([f"ld{layer_scale:.6g}"] if scales else []) + ([pat] if pat else [])
            decay = ([f"wd:{wd_pat}"] if wd_pat is not None else ["no_decay" if no_decay else "decay"])
            groups[key] = dict(
                name="/".join(parts + decay),
                params=[], param_names=[],
                weight_decay=(model_cfg.wd_groups[wd_pat] if wd_pat is not None
                              else 0.0 if no_decay else optim_cfg.weight_decay),
                lr_scale=layer_scale * (model_cfg.lr_groups[pat] if pat else 1.0),
            )
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(n)
    if not groups:
        raise ConfigError("no trainable parameters (everything is frozen)")
    return list(groups.values())

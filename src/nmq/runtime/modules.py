"""Finding and replacing a model's linear layers by name."""

from __future__ import annotations

import torch

from ..compress.recipe import Recipe


def target_layers(model: torch.nn.Module, recipe: Recipe) -> list[str]:
    """Names of the ``nn.Linear`` modules the recipe compresses, in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and recipe.selects(n)]


def set_submodule(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)

"""nmq: N:M structured sparse, low-bit quantized weights for LLMs.

The public surface (DESIGN.md section 8):

>>> import torch, nmq
>>> t = nmq.compress_weight(torch.randn(64, 256), pattern="2:4", bits=4, group_size=128)
>>> y = nmq.matmul(torch.randn(2, 256), t, backend="reference", path="w4a16")
>>> y.shape
torch.Size([2, 64])
"""

from .backends import available as available_backends
from .backends import matmul
from .calibration.run import compress_model
from .compress.recipe import Recipe
from .compress.weight import compress_weight
from .errors import NMQError
from .format.load import load_tensor
from .format.pattern import Pattern
from .format.tensor import NMQTensor
from .models.builtin import builtin_model
from .models.checkpoint import load_model, save_checkpoint
from .models.hf_hook import register_when_imported
from .runtime.linear import NMQLinear

__version__ = "0.1.0"

register_when_imported()  # AutoModelForCausalLM.from_pretrained(nmq checkpoint) works after import nmq

__all__ = [
    "NMQError",
    "NMQLinear",
    "NMQTensor",
    "Pattern",
    "Recipe",
    "available_backends",
    "builtin_model",
    "compress_model",
    "compress_weight",
    "load_model",
    "load_tensor",
    "matmul",
    "save_checkpoint",
]

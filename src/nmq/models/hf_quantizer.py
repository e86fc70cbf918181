"""nmq checkpoints through ``transformers.AutoModelForCausalLM.from_pretrained``.

A checkpoint's config.json carries ``quantization_config`` with
``quant_method: "nmq"``; once ``import nmq`` has run, transformers finds this
quantizer for it, as it finds GPTQ's or AWQ's, and the model it returns has
NMQLinear layers that run nmq's kernels. ``nmq.load_model`` and this path
put the same tensors in the same places (:func:`nmq.models.checkpoint.fill_model`).

>>> import nmq, tempfile, torch
>>> from transformers import AutoModelForCausalLM
>>> out = tempfile.mkdtemp() + "/ckpt"
>>> _ = nmq.save_checkpoint(nmq.compress_model(nmq.builtin_model(), progress=False), out)
>>> model = AutoModelForCausalLM.from_pretrained(out)
>>> type(model.model.layers[0].mlp.down_proj).__name__
'NMQLinear'
>>> ids = torch.tensor([[72, 105]])
>>> torch.equal(model(ids).logits, nmq.load_model(out)(ids).logits)
True

Registration is lazy (:func:`register_when_imported`): importing nmq does not
import transformers, which takes seconds; the quantizer is registered the
moment transformers' quantizer registry is first imported.
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import FormatError
from ..format.load import load_file
from .checkpoint import (
    QUANT_METHOD,
    TENSORS_FILE,
    fill_model,
    place_compressed,
    read_record,
)


class NmqConfig(QuantizationConfigMixin):
    """config.json's ``quantization_config`` of an nmq checkpoint: the recipe it was made with (informative;
    the checkpoint's ``nmq.json`` and tensor headers are what loading follows)."""

    def __init__(self, **recipe) -> None:
        self.__dict__.update(recipe)
        self.quant_method = QUANT_METHOD


class NmqHfQuantizer(HfQuantizer):
    """Loads an nmq checkpoint: compressed layers become NMQLinear (never a dense copy), everything else is the
    checkpoint's tensors, exactly as :func:`nmq.load_model` places them."""

    requires_calibration = True  # a checkpoint made by nmq compress; transformers cannot compress on the fly

    def __init__(self, quantization_config: NmqConfig, **kwargs) -> None:
        super().__init__(quantization_config, **kwargs)
        self.ckpt: Path | None = None

    def update_attn_implementation(self, config):
        # The one hook that sees the config before transformers looks for weight files: point it at the
        # checkpoint's tensor file (transformers' own field for a weight file with another name).
        if getattr(config, "transformers_weights", None) is None:
            config.transformers_weights = TENSORS_FILE
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not checkpoint_files:
            raise FormatError(f"an nmq checkpoint loads from its directory's {TENSORS_FILE}; none was found")
        self.ckpt = Path(checkpoint_files[0]).parent
        record = read_record(self.ckpt)
        # Placeholders of the compressed layers (their fields as meta tensors, from the header alone), so that
        # transformers neither looks for nor initializes a dense weight for them; biases load into them.
        place_compressed(model, load_file(self.ckpt / record["tensors"], data=False), self.ckpt)
        fields = "|".join(re.escape(n) for n in record["compressed_layers"])
        ignored = {rf"^({fields})\.(values|meta|scales|zeros)$"} if fields else set()
        ignored |= {rf"^{re.escape(n)}$" for n in record.get("buffers", [])}  # stored non-persistent buffers
        model._keys_to_ignore_on_load_unexpected = set(model._keys_to_ignore_on_load_unexpected or ()) | ignored
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        # The checkpoint's own reader (checksums, headers) and placement: the same model as nmq.load_model.
        record = read_record(self.ckpt)
        return fill_model(model, record, load_file(self.ckpt / record["tensors"]), self.ckpt)

    def is_serializable(self, safe_serialization=None) -> bool:
        return False  # an nmq checkpoint is written by nmq.save_checkpoint, not save_pretrained

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Register the config and quantizer with transformers (again: no effect)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(NmqConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(NmqHfQuantizer)


register()

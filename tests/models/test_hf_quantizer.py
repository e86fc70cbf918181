"""AutoModelForCausalLM.from_pretrained of an nmq checkpoint: NMQLinear layers, nmq.load_model's tensors."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import nmq
from nmq.models.checkpoint import load_model

from .test_architectures import ARCHITECTURES, COMMON


def _checkpoint(arch, tmp_path, recipe):
    config_cls, model_cls, extra = ARCHITECTURES[arch]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_cls(config_cls(**COMMON, **extra)).eval()
    return nmq.save_checkpoint(nmq.compress_model(model, recipe, progress=False), tmp_path / "ck")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_from_pretrained_gives_the_greedy_tokens_of_load_model(arch, tmp_path):
    ckpt = _checkpoint(arch, tmp_path, nmq.Recipe(pattern="2:4", group_size=64))
    theirs = AutoModelForCausalLM.from_pretrained(ckpt)
    ours = load_model(ckpt)
    assert {n for n, m in theirs.named_modules() if isinstance(m, nmq.NMQLinear)} == \
        {n for n, m in ours.named_modules() if isinstance(m, nmq.NMQLinear)}
    assert not any(isinstance(m, torch.nn.Linear) and n != "lm_head" for n, m in theirs.named_modules())
    assert theirs.config.quantization_config.quant_method == "nmq"
    for name, t in ours.state_dict().items():  # every dense tensor and buffer, same value and dtype
        assert torch.equal(theirs.state_dict()[name], t), name
    for name, b in ours.named_buffers():
        assert torch.equal(theirs.get_buffer(name), b), name
    ids = torch.randint(0, COMMON["vocab_size"], (1, 7), generator=torch.Generator().manual_seed(3))
    kw = {"attention_mask": torch.ones_like(ids), "max_new_tokens": 10, "do_sample": False, "pad_token_id": 0}
    theirs.generation_config.eos_token_id = ours.generation_config.eos_token_id = None
    with torch.no_grad():
        assert torch.equal(theirs(ids).logits, ours(ids).logits)
        assert theirs.generate(ids, **kw).tolist() == ours.generate(ids, **kw).tolist()


def test_a_prune_only_asymmetric_checkpoint_loads_the_same(tmp_path):
    for recipe in (nmq.Recipe(pattern="2:4", bits=16, method="magnitude"),
                   nmq.Recipe(pattern="4:8", group_size=32, symmetric=False)):
        ckpt = _checkpoint("llama", tmp_path / str(recipe.pattern).replace(":", "-"), recipe)
        ids = torch.tensor([[5, 17, 200, 3]])
        with torch.no_grad():
            assert torch.equal(AutoModelForCausalLM.from_pretrained(ckpt)(ids).logits, load_model(ckpt)(ids).logits)


def test_import_nmq_leaves_transformers_unimported_and_registers_when_it_loads():
    code = ("import sys, nmq; assert 'transformers' not in sys.modules; "
            "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as M; print(M['nmq'].__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "NmqHfQuantizer"

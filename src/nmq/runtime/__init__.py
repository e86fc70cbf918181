"""Running compressed models in PyTorch: NMQLinear, the lean decoder, generation, evaluation, tokenizers."""

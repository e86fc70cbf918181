"""Model shapes, written once: the LLaMA-style configurations benchmarks and estimates build."""

from __future__ import annotations

SHAPES: dict[str, dict] = {
    "llama-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048),
    "tiny": dict(vocab_size=256, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512),
}

"""Text to token ids and back: byte-level models need no tokenizer files.

>>> tok = ByteTokenizer()
>>> tok.encode("hé")
[104, 195, 169]
>>> tok.decode([104, 195, 169])
'hé'
"""

from __future__ import annotations

from pathlib import Path

BYTE_VOCAB = 256


class ByteTokenizer:
    """One token per UTF-8 byte (the built-in models)."""

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB).decode("utf-8", errors="replace")

    def chat_ids(self, message: str) -> list[int]:
        from ..errors import ModelError

        raise ModelError("--chat: this model is byte-level and has no chat template; accepted: a model whose "
                         "tokenizer has one (an Instruct model's)")


class HFTokenizer:
    """A Hugging Face tokenizer loaded from a model or checkpoint directory, or from a GGUF file."""

    def __init__(self, source: str | Path) -> None:
        from transformers import AutoTokenizer

        source = Path(source)
        if source.suffix == ".gguf":
            self.tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name, local_files_only=True)
        else:
            self.tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tok(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def chat_ids(self, message: str) -> list[int]:
        """``message`` as the user's turn of a conversation, through the tokenizer's chat template, ready for
        the assistant's reply."""
        if not getattr(self.tok, "chat_template", None):
            from ..errors import ModelError

            raise ModelError("--chat: the tokenizer has no chat template; accepted: a model whose tokenizer "
                             "has one (an Instruct model's)")
        out = self.tok.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                           tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)  # a BatchEncoding in recent transformers


def load_tokenizer(directory: str | Path | None, vocab_size: int):
    """The tokenizer in ``directory`` (or in a GGUF file) if it has one, else bytes for a 256-token vocabulary."""
    if directory is not None and Path(directory).suffix == ".gguf":
        return HFTokenizer(directory)
    if directory is not None and any((Path(directory) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return HFTokenizer(directory)
    if vocab_size == BYTE_VOCAB:
        return ByteTokenizer()
    from ..errors import ModelError

    raise ModelError(f"{directory}: no tokenizer files (tokenizer.json, tokenizer.model) and the vocabulary "
                     f"({vocab_size}) is not byte-level")

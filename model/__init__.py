"""The GPT model: its config, the network, and the KV cache used for decoding."""

from model.config import GPTConfig
from model.gpt import GPT
from model.kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]

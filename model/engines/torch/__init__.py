"""The torch engine: transformers' Llama layers over our own slot KV cache, batched."""

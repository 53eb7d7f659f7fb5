"""llorch: an LLM inference worker and HF-to-GGUF converter over llama.cpp."""

__version__ = "0.1.0"

"""dmporec: an LLM recommender that learns personalized ranking with LoRA SFT, then DMPO."""

__version__ = "0.1.0"

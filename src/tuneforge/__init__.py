"""tuneforge: fine-tune open LLMs on your own data and serve them on your own machines."""

__version__ = "0.1.0"

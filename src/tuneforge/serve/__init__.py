"""The OpenAI-compatible service: files, fine-tuning jobs, models, chat and text completions."""

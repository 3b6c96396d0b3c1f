"""Data: reading users' files (formats.py), cleaning, validation, splitting, tokenisation and batching.

Entry points: `tuneforge.data.prepare.prepare_data` (the pipeline) and `tuneforge.data.inspect.inspect_file`.
"""

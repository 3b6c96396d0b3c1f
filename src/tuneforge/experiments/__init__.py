"""Choosing and iterating: base-model selection, hyperparameter sweeps, k-fold validation, the fine-tune vs
prompting vs RAG decision, data augmentation and the leakage check. Every training they run goes through
recipes/run.py."""

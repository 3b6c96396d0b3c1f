"""Choosing and iterating: base-model selection, hyperparameter sweeps, k-fold validation, the fine-tune vs
prompting vs RAG decision, data augmentation, the leakage check and experiment tracking."""

"""Fine-tuning methods: each module registers itself by name in `registry`."""

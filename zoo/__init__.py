"""tfgated.zoo: the papers' gated architectures, presets and model cards."""

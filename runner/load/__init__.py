"""Pages into the target and the state store, in order: plan, watermark, apply, the writer process."""

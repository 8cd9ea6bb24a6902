"""The model: the Denoiser wrapper, loading, per-family conventions, add-ons (energy head), soft inputs,
tiny models."""

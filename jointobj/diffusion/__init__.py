"""The diffusion process: batches, masking schedules, generation orders, the K-block likelihood, seeded
randomness."""

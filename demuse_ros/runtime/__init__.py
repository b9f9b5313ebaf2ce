"""The 10 Hz policy runtime: chunk timing and seams, scheduling, speculative inference."""

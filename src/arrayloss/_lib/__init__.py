"""What every loss shares: the array-API compat layer, checks, the backend seam, row blocks, reductions."""

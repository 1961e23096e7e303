"""Sparse probing: k-sparse linear probes on neurons, residual dimensions or SAE latents."""

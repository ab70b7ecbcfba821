"""Training: the loop (torchvision references style) and safe, resumable checkpoints."""

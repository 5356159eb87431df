"""The algorithms: model families, pruning, distillation, torch-level quantization, the perceptual judge."""

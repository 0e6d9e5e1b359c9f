"""The notebooks' experiments, one module per system: the paper's comparisons and ablations, the phantom study,
unpaired MR <-> CT, class-conditioned generation and zero-shot translation."""

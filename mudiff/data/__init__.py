"""Data: the embedded phantom, real BraTS/ISLES loaders, the slice pipeline and the task dataset."""

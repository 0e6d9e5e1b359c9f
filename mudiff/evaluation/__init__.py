"""Evaluation: image metrics and paired tests, FID/KID, CKA, uncertainty, robustness, downstream segmentation, the
analyses inside a trained model, and the class-generation metrics with the trust gate."""

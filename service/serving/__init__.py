"""Predictions: the micro-batching predictor, its executor thread (records, caches, one
forward per base model), the LRU caches, image decoding and evaluation as served."""

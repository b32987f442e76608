"""The batched engine: a whole round's users trained as one torch computation in one
process, no messages and no cryptography, with the Flower path's sampling, models and
aggregation arithmetic (issue 16)."""

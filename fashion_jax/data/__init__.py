"""From the Kaggle files to batches.

locate.py          finding the dataset folder (flag, variable, checkout, kagglehub)
styles.py          reading styles.csv (rows with commas in the display name kept)
image_cache.py     decoding photos once, in parallel, into a cached uint8 array
dataset.py         labels, merge map, rare classes, the stratified split, folds, skip report
input_pipeline.py  fixed-shape train batches per (seed, epoch); padded, masked eval batches
augment.py         mirror and shift inside the jitted train step
"""

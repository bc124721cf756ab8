"""Using trained models on new photos.

classifier.py     load_classifier(): one run, an ensemble or a soup as a Python object
predictor.py      the jitted predict function and mixtures of predictions
predict_files.py  a folder or CSV of photos into a CSV of predictions (run_eval.py --predict)
"""

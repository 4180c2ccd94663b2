"""Linear probing of a pretrained encoder on a labelled shard set (trainer/linear_probe.py).

    encoder    the frozen encoder: an exported .safetensors with its recipe, or a run exported on the fly
    features   every sample of a split read once, resized, normalised and encoded
    targets    the chosen labels as class indices (one categorical label) or 0/1 columns (several
               binary labels), and the training subset drawn by patient
    classifier MAE's linear-probing head, trained on the cached features
    metrics    accuracy, balanced accuracy, ROC AUC and average precision per class
"""

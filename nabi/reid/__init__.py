"""Re-identification: tell individual animals apart by photo embeddings.

``nabi.reid.gallery.Gallery`` enrols individuals and answers background / known NAME / unknown for a
photo; ``nabi.reid.metrics`` scores rankings (rank-k, mAP) and open-set answers (AUROC, TAR at a FAR);
``nabi.reid.train`` trains an embedding (``nabi train --head arcface``).
"""

"""Evaluation: finding labeler, NLG/semantic/clinical metrics, structure and speed summaries, tables.

Submodules are imported on demand (``from echo_ray.clinical.labeler import label_report``) so that the
light ones never pull in torch, sentence-transformers or matplotlib.
"""

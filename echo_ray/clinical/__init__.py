"""The report vocabulary shared by data preparation, the text engines and evaluation.

Below `data/`, `engines/` and `eval/` in the layering (tests/test_imports.py checks it): the finding
labeler (`labeler`), the anatomical regions and terminology of normalized reports (`regions`,
`terminology`) and the sentence encoder (`encoder`).

Usage:
    from echo_ray.clinical.labeler import label_report
    from echo_ray.clinical.encoder import SentenceEncoder
"""

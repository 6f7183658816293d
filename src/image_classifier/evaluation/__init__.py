"""The evaluation report: a trained model's predictions on a channel, as figures, pictures and a page.

`metrics` computes the figures (per class, F1, top-k, calibration, confusions) from plain
arrays, `plots` draws them, `report.write` puts them in one folder (atomically).
"""

REPORT_DIR = "evaluation"  # in output/data, beside metrics.json: reaches S3 in output.tar.gz

"""`image-classifier drift`: what an endpoint saw (SageMaker's data capture) against the test channel.

`capture` reads the captured JSON Lines files (a folder or S3) into one row per image,
`statistics` compares them with the evaluation report's figures (population stability index,
Kolmogorov-Smirnov, calibration) and gives the verdict, `report` writes the page and the JSON.
"""

"""batchinfer: batch inference on Prefect 3.

Importing the package is cheap: no Prefect, torch or transformers at import time.
"""

__version__ = "0.1.0"

"""petray: a DICOM gateway for PET imaging.

This package is the pure core: no Ray, no FastAPI. Actors (``actors/``) and the HTTP layer
(``serve/``) are thin shells over the functions here.
"""

__version__ = "0.1.0"

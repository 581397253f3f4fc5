"""DICOM helpers of the pure core: UID validation and the header checks of received instances."""

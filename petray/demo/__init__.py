"""Demo and test tooling: synthetic PET series, an Orthanc runner, the demo's checks."""

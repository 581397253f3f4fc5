"""PET images: volumes, decay and SUV, the quantitative check, filters, rebuilt series."""

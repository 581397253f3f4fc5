"""HTTP routes, one module per resource; each module has an ``api`` and/or ``pages`` router."""

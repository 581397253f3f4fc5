"""The remote processing service: its HTTP client, the archives and the shared folder."""

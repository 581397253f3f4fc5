"""The site: configuration, devices, users, audit, activity, health, retention, preflight."""

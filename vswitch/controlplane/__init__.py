"""The control plane: desired state behind an HTTP JSON API (resources, accounts, audit)."""

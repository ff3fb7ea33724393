"""Serving HTTP: what the platform's and the receiver's servers share, below both."""

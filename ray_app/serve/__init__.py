"""Serving: model variants on Ray Serve, request validation, builders for `serve deploy`, batch scoring."""

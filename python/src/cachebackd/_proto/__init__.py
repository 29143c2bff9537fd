"""Stubs generated from proto/cacheback/v1/cacheback.proto."""

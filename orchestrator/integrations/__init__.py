"""Clients of outside services. Each module is the one place its SDK is used; nothing of the SDK leaves it."""

"""The router: one Starlette app in front of every function, the same code for every backend."""

"""The API's routes, one module per resource. Each route is a thin layer over the store and the engine."""

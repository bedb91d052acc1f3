"""Every flow of pyro_flows as a Pyro TransformModule."""

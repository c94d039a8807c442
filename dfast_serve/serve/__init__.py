"""Ray Serve layer: the router (HTTP ingress), the model replicas, the app builder."""

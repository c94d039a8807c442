"""Ray Serve layer: the ingress deployment, the model replica deployment, the Ray replica client, the app builder."""

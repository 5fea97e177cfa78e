"""Where Kubernetes objects come from: static manifests, later the API watch."""

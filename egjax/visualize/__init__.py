"""Pictures of what the graph's nodes mean."""

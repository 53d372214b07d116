"""Local servers for the demo, the tests and the bench: not on the run path."""

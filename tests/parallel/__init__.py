"""Context-parallel (ring attention) tests: pure checks in-process, real gloo ranks spawned."""

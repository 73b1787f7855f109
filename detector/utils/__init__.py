"""Small, named utilities: box operations, distributed helpers, checkpoints."""

"""Stage entry points: each wires the library modules for one step of the pipeline."""

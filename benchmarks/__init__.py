"""Side-by-side benchmarks; each prints one JSON line a case (see DESIGN.md)."""

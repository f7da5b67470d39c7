"""Alert rules, their tests and the helpers that generate them."""

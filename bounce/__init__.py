"""Bounce analysis: DSN parsing, reason classification, VERP, blacklist policy and stores."""

"""mailpulse: monitoring, bounce analysis and self-expiring blacklists for Postfix nodes."""

__version__ = "0.1.0"

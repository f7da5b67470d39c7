"""Collectors: the maillog, the queue and the host, each turned into events or samples."""

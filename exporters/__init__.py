"""Exporters: Prometheus, SNMP (extend, pass_persist, MIB) and RRD, all fed by one catalogue."""

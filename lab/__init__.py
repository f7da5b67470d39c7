"""The lab: a private Postfix instance, a scripted remote MX and a campaign injector.

Everything here drives real programs on loopback. Ground truth for tests comes from the
campaign plan (what the remote MX was told to answer), never from mailpulse's own code.
"""

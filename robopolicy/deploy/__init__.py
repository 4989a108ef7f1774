"""Deployment: export checkpoints, serve them over websockets, and drive robots at a fixed rate.

The client side (``client``, ``controller``, ``codec``) needs no torch; the server and export do.
"""

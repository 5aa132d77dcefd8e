"""Imported at start-up by subprocesses whose PYTHONPATH includes this folder (tests/test_demo.py):
every attempt to open a network connection fails, so a run that passes here used no network."""

import socket


def _refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse

"""The stack's ground floor: what every part reads and nothing here imports from them.

topology.py lists every service (its port, prefix, health path, launch command and addresses), credentials.py
makes and reads the stack's secrets, healthcheck.py asks any hop whether it answers, and settings.py turns the
environment into one settings object per service. Standard library only: every image copies this folder.
"""

"""Simulated hardware for the agent.

Used by the test-suite and by the agent's "simulated" hardware mode, so that the
same drivers run unchanged against fake chips off a Raspberry Pi.
"""

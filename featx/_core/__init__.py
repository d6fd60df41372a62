"""The ground floor: errors, atomic writes, locks, console, hashing, options, runtime, plotting.

Imports nothing from the floors above. Modules here that need torch import it themselves, so
importing this package costs nothing.
"""

"""The bottom layer: errors, atomic I/O and hashes, devices and DDP, safe image reading, rigid geometry.

Every other part of the package may import these modules; they import nothing else of ours.
"""

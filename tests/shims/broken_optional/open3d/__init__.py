"""Simulates an open3d wheel whose native library cannot load (no libusb on the machine)."""

raise OSError("libusb-1.0.so.0: cannot open shared object file: No such file or directory")

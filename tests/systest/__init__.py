"""The system test: install.sh and the unit under a real systemd.

``./dev systest`` boots a cached Debian Bookworm x86_64 root with
``systemd-nspawn --boot`` (a tmpfs overlay keeps the cache clean), runs the
real ``install.sh`` from a copy of this clone inside it, and checks the
service from outside (the cloud test client on a private mosquitto on the
host) and from inside (systemctl, /proc, /run/credentials).
``./dev systest --arm64`` does the same in a cached Bookworm arm64 disk
image under ``qemu-system-aarch64 -M virt -cpu cortex-a72`` (software
emulation: slow, not in CI).

:mod:`.image` builds and caches the roots, :mod:`.guest` boots them and runs
commands in them, ``test_service.py`` is the test itself.
"""

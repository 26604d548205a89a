#!/bin/sh
# Test data the suite reads from the system, never from the repository: vtest.avi (PETS 2009 pedestrians, OpenCV's
# samples), shipped by Debian's opencv-doc package in its examples' data folder. Idempotent: nothing is done when
# the clip is already there. As root it installs the package with apt-get; otherwise it says what to run.
# The places looked at are simulators/footage.py's VTEST_PLACES.
set -eu

PLACES="/usr/share/doc/opencv-doc/examples/data /usr/share/opencv4/samples/data /usr/local/share/opencv4/samples/data"
say() { echo "[install-test-data] $*"; }

find_vtest() {
	for dir in $PLACES; do
		for name in vtest.avi vtest.avi.gz; do
			if [ -f "$dir/$name" ]; then
				echo "$dir/$name"
				return 0
			fi
		done
	done
	return 1
}

if found=$(find_vtest); then
	say "vtest.avi present: $found (nothing to do)"
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	say "vtest.avi is missing and this is not root: run as root" >&2
	say "  apt-get install -y --no-install-recommends opencv-doc   (or: sudo scripts/install-test-data.sh)" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	say "vtest.avi is missing and there is no apt-get: put OpenCV's samples/data/vtest.avi in one of: $PLACES" >&2
	exit 1
fi

say "apt-get install -y --no-install-recommends opencv-doc"
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends opencv-doc >/dev/null; then
	say "apt-get update (the package lists may be stale)"
	DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends opencv-doc >/dev/null
fi

if found=$(find_vtest); then
	say "vtest.avi installed: $found"
	exit 0
fi
# minimal images (Docker's debian) tell dpkg not to unpack /usr/share/doc
say "opencv-doc is installed but vtest.avi is not on disk: dpkg may exclude /usr/share/doc" >&2
say "  (a path-exclude line in /etc/dpkg/dpkg.cfg.d/); allow /usr/share/doc/opencv-doc/examples/* and reinstall:" >&2
say "  apt-get install --reinstall opencv-doc" >&2
exit 1

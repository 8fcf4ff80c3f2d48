#!/usr/bin/env bash
# System packages some tests use, installed from Debian when they are missing and this runs as root
# with apt-get: dicom3tools (dciodvfy validates the exported RTPLAN / RTSTRUCT / RTDOSE) and chromium
# with chromium-driver (the web page is tested in a real browser, tests/web). Without them those
# tests skip with a message saying what to install.
set -uo pipefail
if { ! command -v dciodvfy || ! command -v chromedriver; } >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools chromium chromium-driver) \
        >/dev/null 2>&1 || echo "note: dicom3tools / chromium could not be installed; the tests that need them will skip"
fi
exit 0

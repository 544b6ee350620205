#!/usr/bin/env bash
# Installs what tests/test_viewer.py drives: OHIF Viewer's built app (npm package @ohif/app, its dist/ folder,
# pinned below) and playwright-core (pinned in package-lock.json; it drives the system Chromium, Debian package
# `chromium`, and downloads no browser). Needs Node.js and npm. Run from anywhere; installs into this folder.
set -euo pipefail
OHIF_VERSION=3.13.2
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
if [ ! -f "ohif-app-$OHIF_VERSION/dist/index.html" ]; then
    rm -rf "ohif-app-$OHIF_VERSION" package "ohif-app-$OHIF_VERSION.tgz"
    npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null
    tar xzf "ohif-app-$OHIF_VERSION.tgz"
    mv package "ohif-app-$OHIF_VERSION"
    rm "ohif-app-$OHIF_VERSION.tgz"
fi

#!/usr/bin/env bash
# System packages the Python dependencies cannot bring:
#   - a Java runtime for Spark (17 or 21): required;
#   - Chromium and its WebDriver, for the storefront page's browser test: required by `make test`;
#   - OpenBLAS (libopenblas0-pthread) for Spark's native BLAS: optional, ALS runs ~1.6x faster with it;
#   - wrk, the HTTP load generator `make bench`'s serving section runs next to its own: optional.
# Installs them with apt-get when we are root on Debian; otherwise says what is missing.
set -euo pipefail

required=()
optional=()
command -v java >/dev/null 2>&1 || required+=(openjdk-17-jre-headless)
command -v chromium >/dev/null 2>&1 || required+=(chromium)
command -v chromedriver >/dev/null 2>&1 || required+=(chromium-driver)
[ -e /usr/lib/x86_64-linux-gnu/libblas.so.3 ] || [ -e /usr/lib/libblas.so.3 ] || optional+=(libopenblas0-pthread)
command -v wrk >/dev/null 2>&1 || optional+=(wrk)
wanted=("${required[@]}" "${optional[@]}")
[ ${#wanted[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${wanted[*]}"
  apt-get update -qq
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >/dev/null; then exit 0; fi
fi
if [ ${#required[@]} -gt 0 ]; then
  echo "missing system packages: ${required[*]} (install them, e.g. sudo apt-get install ${required[*]})" >&2
  exit 1
fi
echo "note: ${optional[*]} not installed (without OpenBLAS Spark's ALS uses its slower Java BLAS; without wrk the serving benchmark uses only its own load generator)" >&2

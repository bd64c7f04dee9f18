#!/usr/bin/env bash
# System packages the Python dependencies cannot bring:
#   - a Java runtime (17 or 21) for Spark and for Kafka, the local broker: required;
#   - Maven (`mvn`), which fetches Kafka's pinned jars from Maven Central (`make jars`): required;
#   - Chromium and its WebDriver, for the storefront page's browser test: required by `make test`;
#   - OpenBLAS (libopenblas0-pthread) for Spark's native BLAS: optional, ALS runs ~1.6x faster with it;
#   - wrk, the HTTP load generator `make bench`'s serving section runs next to its own: optional.
# Installs them with apt-get when we are root on Debian; otherwise says what is missing.
set -euo pipefail

required=()
optional=()
if command -v java >/dev/null 2>&1; then
  # Kafka 4 and Spark 4 need Java 17+.
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ "${major:-0}" -ge 17 ] || required+=(openjdk-17-jre-headless)
else
  required+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null 2>&1 || required+=(maven)
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
  for p in "${required[@]}"; do
    case $p in
      openjdk-*) echo "  java: Spark and the local Kafka broker run on a Java 17+ runtime" >&2 ;;
      maven) echo "  mvn: \`make jars\` fetches Kafka's pinned jars from Maven Central with Maven 3.8+" >&2 ;;
    esac
  done
  exit 1
fi
echo "note: ${optional[*]} not installed (without OpenBLAS Spark's ALS uses its slower Java BLAS; without wrk the serving benchmark uses only its own load generator)" >&2

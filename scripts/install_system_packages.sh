#!/usr/bin/env bash
# System packages of the emulation and firmware twins (Debian/Ubuntu): the C compiler for the
# host build of the firmware library, the Arm cross compiler + newlib, QEMU for the emulated
# Cortex-M boards, clang + lld + wasi-libc (+ compiler-rt's wasm32 builtins) for the WebAssembly
# devices, iproute2 for the optional network-namespace mode, and the mosquitto MQTT broker. Installs only what is
# missing; with everything present it does nothing (and needs neither root nor apt).
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v arm-none-eabi-gcc >/dev/null 2>&1 || need+=(gcc-arm-none-eabi)
[ -d /usr/lib/arm-none-eabi/newlib ] || need+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v wasm-ld >/dev/null 2>&1 || need+=(lld)
[ -f /usr/lib/wasm32-wasi/libc.a ] || need+=(wasi-libc)
ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1 \
  || need+=("libclang-rt-$(clang --version 2>/dev/null | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1 | grep . || echo 14)-dev-wasm32")
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # emulate --tls
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 || need+=(mosquitto)  # emulate --transport mqtt
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || need+=(chromium chromium-driver)
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "tinytwin needs these system packages (no apt-get here; install them with your package manager): ${need[*]}" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "tinytwin needs root (or sudo) to install: ${need[*]}" >&2; exit 1; fi
fi
echo "installing system packages with apt-get: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

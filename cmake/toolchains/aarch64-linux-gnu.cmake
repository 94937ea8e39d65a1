# Cross-compiles the CPU tier for Jetson Orin's ARM cores (Cortex-A78AE, ARMv8.2-A with NEON) from
# an x86-64 Debian/Ubuntu host: `apt-get install g++-aarch64-linux-gnu`. CUDA and TensorRT stay off
# (JetPack's CUDA is built on the Jetson itself). scripts/check-aarch64.sh uses this file and runs
# the ctest programs under qemu-aarch64-static.
#
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
#
# SETOKIM_AARCH64_CPU overrides the target CPU (e.g. cortex-a57 for a Jetson Nano / TX1).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(SETOKIM_AARCH64_TRIPLE aarch64-linux-gnu)
find_program(CMAKE_C_COMPILER ${SETOKIM_AARCH64_TRIPLE}-gcc)
find_program(CMAKE_CXX_COMPILER ${SETOKIM_AARCH64_TRIPLE}-g++)
if(NOT CMAKE_CXX_COMPILER)
  message(FATAL_ERROR "${SETOKIM_AARCH64_TRIPLE}-g++ not found: install g++-aarch64-linux-gnu "
                      "(Debian/Ubuntu) or put the cross compiler on PATH")
endif()

# GCC 12 knows the Orin core; -mcpu also sets the tuning. Older cross compilers: armv8.2-a.
if(NOT SETOKIM_AARCH64_CPU)
  set(SETOKIM_AARCH64_CPU cortex-a78ae)
endif()
set(CMAKE_C_FLAGS_INIT "-mcpu=${SETOKIM_AARCH64_CPU}")
set(CMAKE_CXX_FLAGS_INIT "-mcpu=${SETOKIM_AARCH64_CPU}")

# Libraries and headers from the cross sysroot only; programs (cmake, node) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${SETOKIM_AARCH64_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# ctest runs the aarch64 programs through qemu when it is installed (user-mode emulation).
find_program(SETOKIM_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64)
if(SETOKIM_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${SETOKIM_QEMU_AARCH64} -L /usr/${SETOKIM_AARCH64_TRIPLE})
endif()

# No CUDA or TensorRT in a cross build (an x86 nvcc on PATH would otherwise be picked up).
set(SETOKIM_CUDA OFF CACHE STRING "")
set(SETOKIM_TENSORRT OFF CACHE STRING "")

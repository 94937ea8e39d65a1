# Resolves SETOKIM_TENSORRT (AUTO | ON | OFF) into SETOKIM_WITH_TENSORRT.
# Search order: TENSORRT_ROOT (CMake variable or environment), then JetPack's standard paths.
set(SETOKIM_WITH_TENSORRT OFF)
if(NOT SETOKIM_TENSORRT STREQUAL "OFF")
  if(NOT DEFINED TENSORRT_ROOT AND DEFINED ENV{TENSORRT_ROOT})
    set(TENSORRT_ROOT "$ENV{TENSORRT_ROOT}")
  endif()
  find_path(TENSORRT_INCLUDE_DIR NvInfer.h
    HINTS ${TENSORRT_ROOT} PATH_SUFFIXES include
    PATHS /usr/include/aarch64-linux-gnu /usr/include/x86_64-linux-gnu /usr/local/tensorrt/include)
  find_library(TENSORRT_NVINFER nvinfer
    HINTS ${TENSORRT_ROOT} PATH_SUFFIXES lib lib64
    PATHS /usr/lib/aarch64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/local/tensorrt/lib)
  find_library(TENSORRT_ONNXPARSER nvonnxparser
    HINTS ${TENSORRT_ROOT} PATH_SUFFIXES lib lib64
    PATHS /usr/lib/aarch64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/local/tensorrt/lib)
  set(missing "")
  if(NOT TENSORRT_INCLUDE_DIR OR NOT TENSORRT_NVINFER OR NOT TENSORRT_ONNXPARSER)
    set(missing "TensorRT (NvInfer.h, libnvinfer, libnvonnxparser) was not found")
  elseif(NOT SETOKIM_WITH_CUDA)
    set(missing "TensorRT needs the CUDA tier, which is off or missing")
  endif()
  if(missing STREQUAL "")
    set(SETOKIM_WITH_TENSORRT ON)
    set(TENSORRT_LIBRARIES ${TENSORRT_NVINFER} ${TENSORRT_ONNXPARSER})
  elseif(SETOKIM_TENSORRT STREQUAL "ON")
    message(FATAL_ERROR "SETOKIM_TENSORRT=ON but ${missing}. Set TENSORRT_ROOT to the TensorRT "
                        "install folder (the one holding include/ and lib/), install JetPack's TensorRT "
                        "packages, or build with SETOKIM_TENSORRT=OFF.")
  else()
    message(STATUS "setokim: ${missing}; building without the TensorRT backend (SETOKIM_TENSORRT=AUTO)")
  endif()
endif()

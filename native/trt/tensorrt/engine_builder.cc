#include "tensorrt/engine_builder.h"

#include <NvInfer.h>
#include <NvOnnxParser.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "cuda/cuda_check.h"
#include "tensorrt/host_tensor.h"
#include "tensorrt/logger.h"
#include "tensorrt/trt_ptr.h"

namespace setokim {

namespace {

// Strongly typed on every supported version. TensorRT 11 builds only strongly typed networks and
// deprecates the flag, so it is set only where it still means something.
nvinfer1::NetworkDefinitionCreationFlags StronglyTyped() {
#if NV_TENSORRT_MAJOR >= 11
  return 0;
#else
  return 1U << static_cast<uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
#endif
}

std::vector<char> ReadIfExists(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteAtomically(const std::string& path, const void* data, size_t size) {
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + tmp);
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) throw std::runtime_error("writing " + tmp + " failed (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += (out.empty() ? "" : "; ") + l;
  return out;
}

}  // namespace

EngineBuilder::EngineBuilder(BuildOptions options, ProgressFn progress, CancelFlag cancel)
    : options_(std::move(options)), monitor_(std::move(progress), std::move(cancel)) {}

BuildResult EngineBuilder::Build() {
  using nvinfer1::OptProfileSelector;
  const auto start = std::chrono::steady_clock::now();
  SETOKIM_CUDA_CHECK(cudaSetDevice(options_.device));

  Logger logger(nvinfer1::ILogger::Severity::kWARNING);  // outlives every object below
  auto builder = TakeTrt(nvinfer1::createInferBuilder(logger), "createInferBuilder", logger.LastError());
  auto network = TakeTrt(builder->createNetworkV2(StronglyTyped()), "createNetworkV2", logger.LastError());
  auto parser = TakeTrt(nvonnxparser::createParser(*network, logger), "createParser", logger.LastError());

  if (!parser->parseFromFile(options_.onnxPath.c_str(), static_cast<int>(nvinfer1::ILogger::Severity::kWARNING))) {
    std::vector<std::string> errors;
    for (int32_t i = 0; i < parser->getNbErrors(); ++i) {
      const auto* e = parser->getError(i);
      errors.push_back(std::string(e->desc()) + " (node " + std::to_string(e->node()) + ")");
    }
    throw std::runtime_error("the ONNX parser rejected " + options_.onnxPath + ": " + Join(errors));
  }

  // Parsing a large graph takes a while: a cancel that came meanwhile stops here, before the build.
  if (monitor_.cancelled()) throw std::runtime_error("the engine build was cancelled before it started");

  auto config = TakeTrt(builder->createBuilderConfig(), "createBuilderConfig");
  config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, options_.workspaceBytes);
  config->setProgressMonitor(&monitor_);

  if (options_.profiles.empty()) throw std::invalid_argument("at least one optimisation profile is needed");
  for (const auto& ranges : options_.profiles) {
    nvinfer1::IOptimizationProfile* profile = builder->createOptimizationProfile();  // owned by the builder
    for (int32_t i = 0; i < network->getNbInputs(); ++i) {
      const nvinfer1::ITensor* input = network->getInput(i);
      const std::string name = input->getName();
      auto it = ranges.find(name);
      if (it == ranges.end()) throw std::invalid_argument("the profile has no shape range for input '" + name + "'");
      const nvinfer1::Dims dims = input->getDimensions();
      const ShapeRange& r = it->second;
      if (r.min.size() != static_cast<size_t>(dims.nbDims)) {
        throw std::invalid_argument("the profile for '" + name + "' has rank " + std::to_string(r.min.size()) +
                                    ", the graph's input has rank " + std::to_string(dims.nbDims));
      }
      if (!profile->setDimensions(name.c_str(), OptProfileSelector::kMIN, HostTensor::ToDims(r.min)) ||
          !profile->setDimensions(name.c_str(), OptProfileSelector::kOPT, HostTensor::ToDims(r.opt)) ||
          !profile->setDimensions(name.c_str(), OptProfileSelector::kMAX, HostTensor::ToDims(r.max))) {
        throw std::invalid_argument("TensorRT rejected the profile for '" + name + "': " + logger.LastError());
      }
    }
    if (config->addOptimizationProfile(profile) < 0) {
      throw std::invalid_argument("TensorRT rejected an optimisation profile: " + logger.LastError());
    }
  }

  // A timing cache is tied to device, CUDA and TensorRT version; a mismatched one is ignored.
  TrtPtr<nvinfer1::ITimingCache> cache;
  if (!options_.timingCachePath.empty()) {
    const std::vector<char> blob = ReadIfExists(options_.timingCachePath);
    cache = TakeTrt(config->createTimingCache(blob.data(), blob.size()), "createTimingCache", logger.LastError());
    if (!config->setTimingCache(*cache, /*ignoreMismatch=*/false)) {
      cache = TakeTrt(config->createTimingCache(nullptr, 0), "createTimingCache", logger.LastError());
      config->setTimingCache(*cache, false);
    }
  }

  auto plan =
      TakeTrt(builder->buildSerializedNetwork(*network, *config),
              monitor_.cancelled() ? "the engine build (cancelled)" : "buildSerializedNetwork", logger.LastError());
  WriteAtomically(options_.planPath, plan->data(), plan->size());

  if (!options_.timingCachePath.empty()) {
    if (const nvinfer1::ITimingCache* used = config->getTimingCache()) {
      TrtPtr<nvinfer1::IHostMemory> blob(used->serialize());
      if (blob) WriteAtomically(options_.timingCachePath, blob->data(), blob->size());
    }
  }

  BuildResult result;
  result.bytes = plan->size();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.warnings = logger.TakeMessages();
  return result;
}

}  // namespace setokim

// What the oneDNN handlers share (onednn_conv.cc; built and loaded by onednn.py): the CPU
// engine, a cache of primitives by pass and shape, and oneDNN's errors turned into XLA's.
#ifndef RESNET_JAX_ONEDNN_COMMON_H_
#define RESNET_JAX_ONEDNN_COMMON_H_

#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace resnet_jax {

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Type = dnnl::memory::data_type;
using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

inline dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

template <typename Primitive>
struct Made {
  typename Primitive::primitive_desc desc;
  Primitive primitive;
};

// The primitives made so far, by a key of pass and shape (a primitive's creation JIT-compiles its
// kernel: milliseconds, against microseconds to run it again); XLA may call from several threads.
template <typename Primitive, typename MakeDesc>
const Made<Primitive>& Cached(const std::string& key, MakeDesc make_desc) {
  static std::mutex mutex;
  static std::unordered_map<std::string, Made<Primitive>> made;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = made.find(key);
  if (it == made.end()) {
    typename Primitive::primitive_desc desc = make_desc();
    it = made.emplace(key, Made<Primitive>{desc, Primitive(desc)}).first;
  }
  return it->second;
}

template <typename Body>
ffi::Error Guarded(Body body) {
  try {
    return body();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
}

}  // namespace resnet_jax

#endif  // RESNET_JAX_ONEDNN_COMMON_H_

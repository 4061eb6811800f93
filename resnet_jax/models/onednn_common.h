// What the oneDNN handlers share (onednn_conv.cc; built and loaded by onednn.py): the CPU
// engine, a cache of primitives by pass and shape, and oneDNN's errors turned into XLA's.
#ifndef RESNET_JAX_ONEDNN_COMMON_H_
#define RESNET_JAX_ONEDNN_COMMON_H_

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

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

// Every primitive gets its temporary memory (its scratchpad) from the caller: in oneDNN's default
// (library) mode all primitives share one scratchpad and each must run in the thread that made
// it, but XLA runs a step's independent custom calls at once, from any of its threads, and the
// cache below shares primitives between them (two convolutions' kernel gradients on the 8x8
// digits crashed in oneDNN's im2col on an AVX2 Zen 2).
inline const dnnl::primitive_attr& Attributes() {
  static const dnnl::primitive_attr attributes = [] {
    dnnl::primitive_attr a;
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return attributes;
}

// Runs `primitive` with `args` and a scratchpad of this thread's own: an XLA thread runs one
// custom call at a time, so no two executions share one.
template <typename Desc>
void Execute(const dnnl::primitive& primitive, const Desc& desc, dnnl::stream& stream,
             std::unordered_map<int, dnnl::memory> args) {
  thread_local std::vector<uint8_t> scratch;
  const dnnl::memory::desc scratch_desc = desc.scratchpad_desc();
  if (scratch.size() < scratch_desc.get_size()) scratch.resize(scratch_desc.get_size());
  args.insert({DNNL_ARG_SCRATCHPAD, dnnl::memory(scratch_desc, Engine(), scratch.data())});
  primitive.execute(stream, args);
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

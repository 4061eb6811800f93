// oneDNN's convolutions as XLA FFI custom calls on the CPU (resnet_jax/models/onednn_conv.py).
//
// Three handlers, one per pass of a 2-D convolution of an NHWC input with an HWIO kernel (no
// bias, no dilation, one group), all float32: the forward, the input gradient and the kernel
// gradient. Activations stay in XLA's row-major NHWC, which is oneDNN's `nhwc` (PyTorch's
// channels_last), so nothing is copied into another layout; the kernel, small, is reordered into
// the layout the primitive picked. A primitive is made once per shape and kept (onednn_common.h).
#include <cstdint>
#include <string>

#include "onednn_common.h"

namespace resnet_jax {
namespace {

// One convolution's shapes: input (n, h, w, c), kernel (kh, kw, c, o), output (n, oh, ow, o).
struct Shape {
  memory::dim n, h, w, c, kh, kw, o, oh, ow;
  memory::dims strides, pad_lo, pad_hi;

  memory::desc Input() const { return {{n, c, h, w}, Type::f32, Tag::nhwc}; }
  memory::desc Output() const { return {{n, o, oh, ow}, Type::f32, Tag::nhwc}; }
  memory::desc Kernel(Tag tag) const { return {{o, c, kh, kw}, Type::f32, tag}; }
  std::string Key(char pass) const {
    std::string key(1, pass);
    for (memory::dim v : {n, h, w, c, kh, kw, o, oh, ow, strides[0], strides[1], pad_lo[0],
                          pad_lo[1], pad_hi[0], pad_hi[1]}) {
      key += ',' + std::to_string(v);
    }
    return key;
  }
};

Shape ShapeOf(ffi::Span<const int64_t> input, ffi::Span<const int64_t> kernel,
              ffi::Span<const int64_t> output, int64_t stride_h, int64_t stride_w,
              int64_t pad_h_lo, int64_t pad_h_hi, int64_t pad_w_lo, int64_t pad_w_hi) {
  return Shape{input[0],  input[1],  input[2],  input[3], kernel[0],
               kernel[1], kernel[3], output[1], output[2], {stride_h, stride_w},
               {pad_h_lo, pad_w_lo}, {pad_h_hi, pad_w_hi}};
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Shape& s) {
  return {Engine(),     dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          s.Input(),    s.Kernel(Tag::any),                s.Output(),
          s.strides,    s.pad_lo,                          s.pad_hi,
          Attributes()};
}

// The backward passes' descriptors take the same arguments, the forward's as a hint.
template <typename Desc>
Desc BackwardDesc(const Shape& s) {
  return Desc(Engine(), dnnl::algorithm::convolution_direct, s.Input(), s.Kernel(Tag::any),
              s.Output(), s.strides, s.pad_lo, s.pad_hi, ForwardDesc(s), Attributes());
}

void Reorder(const memory& from, const memory& to, dnnl::stream& stream) {
  dnnl::reorder::primitive_desc desc(from, to, Attributes());
  Execute(dnnl::reorder(desc), desc, stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
}

// The HWIO kernel at `data`, in the layout `wanted` (reordered into new memory if it differs).
memory KernelAs(const Shape& s, const memory::desc& wanted, void* data, dnnl::stream& stream) {
  memory given(s.Kernel(Tag::hwio), Engine(), data);
  if (wanted == given.get_desc()) return given;
  memory reordered(wanted, Engine());
  Reorder(given, reordered, stream);
  return reordered;
}

ffi::Error Forward(F32 x, F32 k, F32Out y, int64_t sh, int64_t sw, int64_t phl, int64_t phh,
                   int64_t pwl, int64_t pwh) {
  return Guarded([&] {
    Shape s = ShapeOf(x.dimensions(), k.dimensions(), y->dimensions(), sh, sw, phl, phh, pwl, pwh);
    const auto& conv = Cached<dnnl::convolution_forward>(s.Key('f'), [&] { return ForwardDesc(s); });
    dnnl::stream stream(Engine());
    memory input(conv.desc.src_desc(), Engine(), x.typed_data());
    memory output(conv.desc.dst_desc(), Engine(), y->typed_data());
    memory kernel = KernelAs(s, conv.desc.weights_desc(), k.typed_data(), stream);
    Execute(conv.primitive, conv.desc, stream,
            {{DNNL_ARG_SRC, input}, {DNNL_ARG_WEIGHTS, kernel}, {DNNL_ARG_DST, output}});
    stream.wait();
    return ffi::Error::Success();
  });
}

ffi::Error InputGradient(F32 dy, F32 k, F32Out dx, int64_t sh, int64_t sw, int64_t phl,
                         int64_t phh, int64_t pwl, int64_t pwh) {
  return Guarded([&] {
    Shape s = ShapeOf(dx->dimensions(), k.dimensions(), dy.dimensions(), sh, sw, phl, phh, pwl, pwh);
    using Primitive = dnnl::convolution_backward_data;
    const auto& conv = Cached<Primitive>(
        s.Key('d'), [&] { return BackwardDesc<Primitive::primitive_desc>(s); });
    dnnl::stream stream(Engine());
    memory output_grad(conv.desc.diff_dst_desc(), Engine(), dy.typed_data());
    memory input_grad(conv.desc.diff_src_desc(), Engine(), dx->typed_data());
    memory kernel = KernelAs(s, conv.desc.weights_desc(), k.typed_data(), stream);
    Execute(conv.primitive, conv.desc, stream,
            {{DNNL_ARG_DIFF_DST, output_grad},
             {DNNL_ARG_WEIGHTS, kernel},
             {DNNL_ARG_DIFF_SRC, input_grad}});
    stream.wait();
    return ffi::Error::Success();
  });
}

ffi::Error KernelGradient(F32 x, F32 dy, F32Out dk, int64_t sh, int64_t sw, int64_t phl,
                          int64_t phh, int64_t pwl, int64_t pwh) {
  return Guarded([&] {
    Shape s = ShapeOf(x.dimensions(), dk->dimensions(), dy.dimensions(), sh, sw, phl, phh, pwl, pwh);
    using Primitive = dnnl::convolution_backward_weights;
    const auto& conv = Cached<Primitive>(
        s.Key('w'), [&] { return BackwardDesc<Primitive::primitive_desc>(s); });
    dnnl::stream stream(Engine());
    memory input(conv.desc.src_desc(), Engine(), x.typed_data());
    memory output_grad(conv.desc.diff_dst_desc(), Engine(), dy.typed_data());
    memory kernel_grad(s.Kernel(Tag::hwio), Engine(), dk->typed_data());
    bool direct = conv.desc.diff_weights_desc() == kernel_grad.get_desc();
    memory computed = direct ? kernel_grad : memory(conv.desc.diff_weights_desc(), Engine());
    Execute(conv.primitive, conv.desc, stream,
            {{DNNL_ARG_SRC, input},
             {DNNL_ARG_DIFF_DST, output_grad},
             {DNNL_ARG_DIFF_WEIGHTS, computed}});
    if (!direct) Reorder(computed, kernel_grad, stream);
    stream.wait();
    return ffi::Error::Success();
  });
}

}  // namespace
}  // namespace resnet_jax

// One binding for the three passes: two float32 operands, one result, the strides and padding.
#define RESNET_JAX_CONV_BINDING                 \
  resnet_jax::ffi::Ffi::Bind()                  \
      .Arg<resnet_jax::F32>()                   \
      .Arg<resnet_jax::F32>()                   \
      .Ret<resnet_jax::F32>()                   \
      .Attr<int64_t>("stride_h")                \
      .Attr<int64_t>("stride_w")                \
      .Attr<int64_t>("pad_h_lo")                \
      .Attr<int64_t>("pad_h_hi")                \
      .Attr<int64_t>("pad_w_lo")                \
      .Attr<int64_t>("pad_w_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvForward, resnet_jax::Forward,
                              RESNET_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvInputGradient, resnet_jax::InputGradient,
                              RESNET_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvKernelGradient, resnet_jax::KernelGradient,
                              RESNET_JAX_CONV_BINDING);

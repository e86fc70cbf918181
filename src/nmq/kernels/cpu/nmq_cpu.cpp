// nmq.kernels.cpu._nmq_cpu: the Python bindings of the extension's parts
// (ext_*.cpp). Buffers arrive through DLPack/the buffer protocol (numpy
// arrays or torch CPU tensors) or as addresses the Python side has checked;
// nothing here links against libtorch.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "ext.h"
#include "ext_weights.h"

namespace nb = nanobind;
using namespace nb::literals;
using namespace nmq;

namespace {

// Binds a layout's numbers field by field, for the Python mirror to set by
// name, and records the struct's size and each field's offset on the class,
// for the tests that hold the mirror to the struct.
template <typename S>
class Fields {
 public:
  Fields(nb::module_& m, const char* name) : cls_(m, name) {
    cls_.def(nb::init<>());
    cls_.attr("sizeof") = sizeof(S);
    cls_.attr("offsets") = offsets_;
  }

  template <typename T>
  Fields& field(const char* name, T S::*member) {
    cls_.def_rw(name, member);
    const S s{};
    offsets_[name] = size_t(reinterpret_cast<const char*>(&(s.*member)) - reinterpret_cast<const char*>(&s));
    return *this;
  }

 private:
  nb::class_<S> cls_;
  nb::dict offsets_;
};

nb::dict layout_constants() {
  nb::dict c, vbytes, mbytes;
  for (int kind : {KIND_24, KIND_48, KIND_14, KIND_DENSE}) {
    vbytes[nb::int_(kind)] = fast_vbytes(kind);
    mbytes[nb::int_(kind)] = fast_mbytes(kind);
  }
  c["KIND_24"] = int(KIND_24);
  c["KIND_48"] = int(KIND_48);
  c["KIND_14"] = int(KIND_14);
  c["KIND_DENSE"] = int(KIND_DENSE);
  c["ROWS"] = ROWS;
  c["PAIR_K"] = PAIR_K;
  c["QUAD24"] = QUAD24;
  c["META_DENSE"] = int(META_DENSE);
  c["META_INDEX"] = int(META_INDEX);
  c["META_RANK"] = int(META_RANK);
  c["vbytes"] = vbytes;
  c["mbytes"] = mbytes;
  return c;
}

}  // namespace

NB_MODULE(_nmq_cpu, m) {
  m.doc() = "nmq CPU kernels: N:M sparse low-bit matmul with runtime ISA dispatch";

  m.def("isa_levels", &isa_levels, "ISA levels this CPU can run, best first");
  m.def("set_isa", &set_isa, "Force an ISA level: avx512, avx2 or portable");
  m.def("get_isa", [] { return std::string(current_level().name); });
  m.def("set_threads", &set_pool_threads, "Threads the kernels use (the caller included)");
  m.def("get_threads", &pool_threads);

  Fields<FastParams>(m, "FastParams")
      .field("kind", &FastParams::kind)
      .field("out", &FastParams::out)
      .field("blocks", &FastParams::blocks)
      .field("kk", &FastParams::kk)
      .field("group", &FastParams::group)
      .field("groups", &FastParams::groups)
      .field("steps", &FastParams::steps)
      .field("vbytes", &FastParams::vbytes)
      .field("mbytes", &FastParams::mbytes)
      .field("in_features", &FastParams::in_features)
      .field("symmetric", &FastParams::symmetric);
  Fields<GenericParams>(m, "GenericParams")
      .field("out", &GenericParams::out)
      .field("in_features", &GenericParams::in_features)
      .field("padded_in", &GenericParams::padded_in)
      .field("n", &GenericParams::n)
      .field("m", &GenericParams::m)
      .field("bits", &GenericParams::bits)
      .field("group", &GenericParams::group)
      .field("groups", &GenericParams::groups)
      .field("meta_kind", &GenericParams::meta_kind)
      .field("meta_width", &GenericParams::meta_width)
      .field("symmetric", &GenericParams::symmetric);
  m.attr("layout_constants") = layout_constants();

  // run(x, bf16, tokens, w4a8, y, P, out_bf16) and dequantize(w): see ext_weights.h.
  nb::class_<FastWeight>(m, "FastWeight")
      .def(nb::init<Array, Array, Array, Array, const FastParams&>())
      .def("run", &FastWeight::run)
      .def("dequantize", &FastWeight::dequantize);
  nb::class_<GenericWeight>(m, "GenericWeight")
      .def(nb::init<Array, Array, Array, Array, Array, const GenericParams&>())
      .def("run", &GenericWeight::run)
      .def("dequantize", &GenericWeight::dequantize);

  m.def("attend", &attend, "q"_a, "k"_a, "v"_a, "out"_a, nb::kw_only(), "heads"_a, "kv_heads"_a, "length"_a, "dim"_a,
        "head_stride"_a, "bf16"_a, "scale"_a, nb::call_guard<nb::gil_scoped_release>(),
        "Attention of one position over a KV cache (addresses; see nmq.backends.cpu.decode)");
  m.def("attend_step", &attend_step, "q"_a, "k"_a, "v"_a, "cos"_a, "sin"_a, "k_cache"_a, "v_cache"_a, "out"_a,
        nb::kw_only(), "heads"_a, "kv_heads"_a, "dim"_a, "pos"_a, "head_stride"_a, "bf16"_a, "scale"_a,
        nb::call_guard<nb::gil_scoped_release>(),
        "Rotary, KV cache write and attention of one decode position (addresses)");
  m.def("add_rms_norm", &add_rms_norm, "h += add (add may be 0), out = weight * rmsnorm(h) (addresses)");
  m.def("silu_mul", &silu_mul, "out = silu(g) * u (addresses)");

  m.def("has_gram_bf16", &has_gram_bf16, "Whether gram_bf16 runs at the current ISA level");
  m.def("gram_bf16", &gram_bf16,
        "c [16 panels]^2 fp32 += X^T X of bf16 X packed [panels][pairs][16][2] (addresses; see nmq.backends.cpu.gram)");
}

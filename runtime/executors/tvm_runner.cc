// tvm_runner: minimal standalone runner for an Apache TVM (0.27) Relax VM library.
//
// Usage: tvm_runner LIB.so OUT_DIR [IN0.npy IN1.npy ...]
//
// Loads a library produced by tvm.relax.build(...).export_library(...), initialises
// the Relax VM on CPU (pooled allocator), feeds the given .npy files as the positional
// arguments of "main" and writes every output as OUT_DIR/out_<i>.npy.
// Only needs the TVM runtime (libtvm_runtime.so + libtvm_ffi.so), no Python, so it can
// run on the target board or under qemu-user for cross-compiled libraries.
//
// Supported .npy: format version 1-3, C order, little-endian (or byte-free) dtypes
// float16/32/64, int8/16/32/64, uint8/16/32/64, bool. Anything else: exit code 2.
// Exit codes: 0 ok, 1 runtime error, 2 bad usage or unsupported input.

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

// Input problems that are the caller's fault (exit code 2).
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    t->data = std::aligned_alloc(64, (ffi::GetDataSize(*t) / 64 + 1) * 64);
    if (!t->data) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// numpy descr (without byte-order char) <-> DLDataType
struct DTypeName {
  const char* name;
  uint8_t code, bits;
};
const DTypeName kDTypes[] = {
    {"f2", kDLFloat, 16}, {"f4", kDLFloat, 32}, {"f8", kDLFloat, 64}, {"i1", kDLInt, 8},
    {"i2", kDLInt, 16},   {"i4", kDLInt, 32},   {"i8", kDLInt, 64},   {"u1", kDLUInt, 8},
    {"u2", kDLUInt, 16},  {"u4", kDLUInt, 32},  {"u8", kDLUInt, 64},  {"b1", kDLBool, 8},
};

// Value of 'key' in the header dict, e.g. "'<f4'", "False", "(1, 3, 224, 224)".
std::string DictValue(const std::string& hdr, const std::string& key) {
  size_t p = hdr.find("'" + key + "'");
  if (p == std::string::npos) throw InputError("npy header lacks '" + key + "'");
  p = hdr.find(':', p) + 1;
  while (hdr[p] == ' ') ++p;
  size_t e = hdr[p] == '(' ? hdr.find(')', p) + 1 : hdr.find_first_of(",}", p);
  return hdr.substr(p, e - p);
}

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError("cannot open " + path);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw InputError(path + ": not a .npy file");
  uint32_t hlen = 0;
  unsigned char b[4] = {0, 0, 0, 0};
  f.read(reinterpret_cast<char*>(b), magic[6] == 1 ? 2 : 4);
  hlen = b[0] | b[1] << 8 | b[2] << 16 | uint32_t(b[3]) << 24;
  std::string hdr(hlen, '\0');
  if (!f.read(&hdr[0], hlen)) throw InputError(path + ": truncated header");

  std::string descr = DictValue(hdr, "descr");  // e.g. '<f4'
  if (DictValue(hdr, "fortran_order") != "False")
    throw InputError(path + ": Fortran-order arrays are not supported");
  if (descr.size() != 5 || (descr[1] != '<' && descr[1] != '|'))
    throw InputError(path + ": unsupported dtype " + descr + " (need little-endian, e.g. '<f4')");
  DLDataType dtype{0, 0, 1};
  for (const auto& d : kDTypes)
    if (descr.compare(2, 2, d.name) == 0) dtype = DLDataType{d.code, d.bits, 1};
  if (dtype.bits == 0) throw InputError(path + ": unsupported dtype " + descr);

  std::vector<int64_t> shape;
  std::string s = DictValue(hdr, "shape");
  for (size_t i = 1; i < s.size();) {
    size_t used = 0;
    if (s[i] >= '0' && s[i] <= '9') {
      shape.push_back(std::stoll(s.substr(i), &used));
      i += used;
    } else {
      ++i;
    }
  }

  ffi::Tensor t =
      ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
  size_t nbytes = ffi::GetDataSize(*t.GetDLTensorPtr());
  if (!f.read(static_cast<char*>(t.data_ptr()), nbytes)) {
    throw InputError(path + ": truncated data");
  }
  return t;
}

void WriteNpy(const std::string& path, const ffi::Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();
  if (dl->device.device_type != kDLCPU) throw std::runtime_error("output is not on CPU");
  if (!t.IsContiguous()) throw std::runtime_error("output is not contiguous");
  const char* name = nullptr;
  for (const auto& d : kDTypes)
    if (dl->dtype.code == d.code && dl->dtype.bits == d.bits && dl->dtype.lanes == 1) name = d.name;
  if (!name) {
    throw std::runtime_error("unsupported output dtype " +
                             std::string(ffi::DLDataTypeToString(dl->dtype)));
  }

  std::ostringstream h;
  h << "{'descr': '" << (dl->dtype.bits == 8 ? '|' : '<') << name
    << "', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < dl->ndim; ++i) {
    h << dl->shape[i] << (dl->ndim == 1 ? "," : i + 1 < dl->ndim ? ", " : "");
  }
  h << "), }";
  std::string hdr = h.str();
  hdr.append(63 - (10 + hdr.size()) % 64, ' ');  // pad so that data starts 64-byte aligned
  hdr.push_back('\n');

  std::ofstream f(path, std::ios::binary);
  uint16_t hlen = static_cast<uint16_t>(hdr.size());
  const char pre[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, char(hlen & 0xff), char(hlen >> 8)};
  f.write(pre, 10);
  f.write(hdr.data(), hdr.size());
  f.write(static_cast<const char*>(dl->data) + dl->byte_offset, ffi::GetDataSize(*dl));
  if (!f) throw std::runtime_error("failed to write " + path);
}

// Flatten the VM result (a tensor or a possibly nested tuple of tensors).
void CollectOutputs(const ffi::Any& v, std::vector<ffi::Tensor>* out) {
  if (auto t = v.as<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = v.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& e : *arr) CollectOutputs(e, out);
  } else {
    throw std::runtime_error("unsupported output type " + v.GetTypeKey());
  }
}

// Everything crosses into libtvm_ffi / libtvm_runtime through the C ABI: global lookup and
// TVMFFIFunctionCall (errors come back as codes and are rethrown here). ffi::Function's
// operator() would take a C++ fast path that lets exceptions cross the library boundary,
// which breaks when the runner uses another C++ runtime than TVM (e.g. zig c++ / libc++).
ffi::Any Call(const ffi::Function& f, std::vector<ffi::AnyView> args) {
  ffi::Any result;
  TVM_FFI_CHECK_SAFE_CALL(TVMFFIFunctionCall(const_cast<ffi::FunctionObj*>(f.get()),
                                             reinterpret_cast<TVMFFIAny*>(args.data()),
                                             static_cast<int32_t>(args.size()),
                                             reinterpret_cast<TVMFFIAny*>(&result)));
  return result;
}

ffi::Function GetGlobal(const char* name) {
  std::optional<ffi::Function> f = ffi::Function::GetGlobal(name);
  if (!f) throw std::runtime_error(std::string("TVM runtime lacks global function ") + name);
  return *f;
}

ffi::Function GetFunction(const ffi::Module& mod, const char* name) {
  static const ffi::Function get = GetGlobal("ffi.ModuleGetFunction");
  auto f = Call(get, {mod, name, true}).cast<ffi::Optional<ffi::Function>>();
  if (!f.has_value()) {
    throw std::runtime_error(std::string("module has no function '") + name + "'");
  }
  return f.value();
}

int Run(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " LIB.so OUT_DIR [IN0.npy ...]\n";
    return 2;
  }
  std::vector<ffi::Any> inputs;
  for (int i = 3; i < argc; ++i) inputs.emplace_back(ReadNpy(argv[i]));

  std::string lib_path = argv[1];
  if (lib_path.find('/') == std::string::npos) lib_path = "./" + lib_path;  // dlopen: not $PATH
  ffi::Module lib = Call(GetGlobal("ffi.ModuleLoadFromFile"), {ffi::String(lib_path)})
                        .cast<ffi::Module>();
  ffi::Module vm = Call(GetFunction(lib, "vm_load_executable"), {}).cast<ffi::Module>();
  // (device_type, device_id, allocator) per device; allocator 1 = naive, 2 = pooled.
  Call(GetFunction(vm, "vm_initialization"), {static_cast<int>(kDLCPU), 0, 2});
  ffi::Any result =
      Call(GetFunction(vm, "main"), std::vector<ffi::AnyView>(inputs.begin(), inputs.end()));

  std::vector<ffi::Tensor> outputs;
  CollectOutputs(result, &outputs);
  for (size_t i = 0; i < outputs.size(); ++i) {
    WriteNpy(std::string(argv[2]) + "/out_" + std::to_string(i) + ".npy", outputs[i]);
  }
  std::cout << "wrote " << outputs.size() << " output(s) to " << argv[2] << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const InputError& e) {
    std::cerr << "tvm_runner: " << e.what() << "\n";
    return 2;
  } catch (const ffi::Error& e) {
    std::cerr << "tvm_runner: TVM error:\n" << e.FullMessage() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "tvm_runner: error: " << e.what() << "\n";
    return 1;
  }
}

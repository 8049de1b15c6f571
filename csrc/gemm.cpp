// The GEMM every operator uses (conure::gemm) and, on the CPU, which backend runs it: oneDNN or ATen's own GEMM
// (MKL), measured once per shape class at first use and kept in a plan file, so later runs make the same choices.
//
// The plan file (set by conure at import: cpu_gemm_plan_file; unset, as from C++, the plan lives in memory only)
// holds one decision a line, whitespace-separated:
//   <dtype> <mm|bmm> <layout> M=<m> N=<n> K=<k> <top-level|in-region> <onednn|aten> onednn_us=<t> aten_us=<t>
// dtype: float32 or bfloat16; layout: a's then b's, N (rows contiguous), T (transposed) or X (other strides); M, N, K
// rounded up to powers of two; in-region: inside an at::parallel_for (the fused blocks' chunks), where each GEMM runs
// on one thread. The first line of a key wins; malformed lines are skipped (and counted for the caller to warn). A new
// decision is appended as one write(), under an flock and after re-reading the file, so processes that start together
// make one decision per class.
#include "gemm.h"

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty_native.h>
#include <c10/util/ParallelGuard.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "ops.h"

namespace conure {
namespace {

// ---- the two CPU backends

using MkldnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

// at::native::mkldnn_matmul, looked up at run time so a torch without it still loads the extension.
MkldnnMatmul find_mkldnn_matmul() {
  static const MkldnnMatmul fn = []() -> MkldnnMatmul {
    // Search the library that holds ATen (libtorch_cpu), which Python may have loaded RTLD_LOCAL.
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&at::native::empty_cpu), &info) == 0 || info.dli_fname == nullptr)
      return nullptr;
    void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (lib == nullptr) return nullptr;
    return reinterpret_cast<MkldnnMatmul>(dlsym(lib, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
  }();
  return fn;
}

// at::native::mkldnn_matmul refuses to run (for float32 too: it is ATen's bfloat16 path) unless oneDNN may use
// AVX512BW/VL/DQ or AVX-NE-CONVERT (ONEDNN_MAX_CPU_ISA caps what it may use): on an AVX2-only CPU every call would
// throw. Probed once per dtype with a 2x2 product, rather than re-deriving ATen's rule here.
bool onednn_runs(at::ScalarType dtype) {
  auto probe = [](at::ScalarType t) {
    const MkldnnMatmul fn = find_mkldnn_matmul();
    if (fn == nullptr) return false;
    try {
      const at::Tensor a = at::ones({2, 2}, t);
      at::Tensor out = at::empty({2, 2}, t);
      fn(a, a, out, 0.0f, 1.0f);
      return true;
    } catch (const c10::Error&) {
      return false;
    }
  };
  static const bool float_ok = probe(at::kFloat);
  static const bool bf16_ok = probe(at::kBFloat16);
  return dtype == at::kFloat ? float_ok : bf16_ok;
}

enum class Backend { kOneDnn, kAten };

const char* backend_name(Backend backend) { return backend == Backend::kOneDnn ? "onednn" : "aten"; }

void run_gemm(Backend backend, const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (backend == Backend::kOneDnn) {
    find_mkldnn_matmul()(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
    return;
  }
  // A kernel's internal GEMM: no autograd here even when an operand is a leaf that requires grad (the fused
  // blocks pass their weights as they are); ATen's out= variants refuse such operands otherwise.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::Tensor o = out;
  if (out.dim() == 3) {  // batched: a is [T, M, K] or [1, M, K] (broadcast), b is [T, K, N]
    const at::Tensor a3 = a.size(0) == out.size(0) ? a : a.expand({out.size(0), a.size(1), a.size(2)});
    if (accumulate) {
      o.baddbmm_(a3, b);
    } else {
      at::bmm_out(o, a3, b);
    }
    return;
  }
  if (accumulate) {
    o.addmm_(a, b);
  } else {
    at::mm_out(o, a, b);
  }
}

// ---- CONURE_CPU_GEMM: auto (the measured plan), onednn or aten; read once.

enum class Mode { kAuto, kOneDnn, kAten, kInvalid };

Mode mode() {
  static const std::string value = [] {
    const char* v = std::getenv("CONURE_CPU_GEMM");
    return std::string(v != nullptr ? v : "");
  }();
  static const Mode parsed = value.empty() || value == "auto" ? Mode::kAuto
                             : value == "onednn"              ? Mode::kOneDnn
                             : value == "aten"                ? Mode::kAten
                                                              : Mode::kInvalid;
  TORCH_CHECK(parsed != Mode::kInvalid, "CONURE_CPU_GEMM must be auto, onednn or aten (or unset: auto), got '", value,
              "'");
  return parsed;
}

// ---- the plan

constexpr double kAtenMargin = 1.1;  // ATen only when oneDNN takes over 1.1x its time: noise cannot flip a near-tie
constexpr double kMinMeasuredFlops = double(int64_t{1} << 24);  // 2*M*N*K of the rounded class; below: oneDNN
constexpr int kRepeats = 3;                                     // timed runs of each backend, after one warm-up

struct Decision {
  Backend backend;
  double onednn_us, aten_us;
  bool from_file;
};

struct Plan {
  std::mutex mutex;  // held while a class is looked up or measured: concurrent chunks wait for one decision
  std::string path;  // empty: in memory only
  std::map<std::string, Decision> decisions;
  bool warned_unwritable = false;
};

Plan& plan() {
  static Plan* p = new Plan();  // never destroyed: a GEMM on another thread at exit must not meet a dead mutex
  return *p;
}

int64_t round_up_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

char layout(const at::Tensor& t) {
  if (t.stride(-1) == 1) return 'N';
  return t.stride(-2) == 1 ? 'T' : 'X';
}

// Inside an at::parallel_for body, on any thread count. at::in_parallel_region() alone is false in parallel_for's
// one-thread path with OpenMP, which would give the fused blocks' chunk GEMMs another class (and maybe another
// backend, other bits) at one thread than at two; parallel_for sets the ParallelGuard on both paths.
bool in_parallel_for() { return c10::ParallelGuard::is_enabled() || at::in_parallel_region(); }

// "<dtype> <mm|bmm> <layout> M=.. N=.. K=.. <top-level|in-region>"
std::string class_key(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, int64_t M, int64_t N,
                      int64_t K) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%s %s %c%c M=%lld N=%lld K=%lld %s",
                out.scalar_type() == at::kFloat ? "float32" : "bfloat16", out.dim() == 3 ? "bmm" : "mm", layout(a),
                layout(b), static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K),
                in_parallel_for() ? "in-region" : "top-level");
  return buf;
}

std::string format_decision(const std::string& key, const Decision& d) {
  char buf[80];
  std::snprintf(buf, sizeof(buf), " %s onednn_us=%.1f aten_us=%.1f", backend_name(d.backend), d.onednn_us, d.aten_us);
  return key + buf;
}

bool parse_pow2(const std::string& field, const char* prefix, int64_t* value) {
  const size_t n = std::strlen(prefix);
  if (field.compare(0, n, prefix) != 0 || field.size() == n) return false;
  char* end = nullptr;
  const long long v = std::strtoll(field.c_str() + n, &end, 10);
  *value = v;
  return *end == '\0' && v > 0 && (v & (v - 1)) == 0;
}

bool parse_us(const std::string& field, const char* prefix, double* value) {
  const size_t n = std::strlen(prefix);
  if (field.compare(0, n, prefix) != 0 || field.size() == n) return false;
  char* end = nullptr;
  *value = std::strtod(field.c_str() + n, &end);
  return *end == '\0' && std::isfinite(*value) && *value >= 0.0;
}

// One plan-file line as (key, decision), or nothing when it is malformed.
std::optional<std::pair<std::string, Decision>> parse_line(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> f;
  for (std::string field; in >> field;) f.push_back(field);
  int64_t m, n, k;
  Decision d{Backend::kOneDnn, 0.0, 0.0, true};
  const bool ok = f.size() == 10 && (f[0] == "float32" || f[0] == "bfloat16") && (f[1] == "mm" || f[1] == "bmm") &&
                  f[2].size() == 2 && std::strchr("NTX", f[2][0]) != nullptr &&
                  std::strchr("NTX", f[2][1]) != nullptr && parse_pow2(f[3], "M=", &m) && parse_pow2(f[4], "N=", &n) &&
                  parse_pow2(f[5], "K=", &k) && (f[6] == "top-level" || f[6] == "in-region") &&
                  (f[7] == "onednn" || f[7] == "aten") && parse_us(f[8], "onednn_us=", &d.onednn_us) &&
                  parse_us(f[9], "aten_us=", &d.aten_us);
  if (!ok) return std::nullopt;
  d.backend = f[7] == "onednn" ? Backend::kOneDnn : Backend::kAten;
  std::string key = f[0];
  for (int i = 1; i < 7; ++i) key += " " + f[i];
  return std::make_pair(key, d);
}

std::string read_all(int fd) {
  std::string text;
  char buf[4096];
  for (off_t at = 0;;) {
    const ssize_t got = ::pread(fd, buf, sizeof(buf), at);
    if (got <= 0) break;
    text.append(buf, static_cast<size_t>(got));
    at += got;
  }
  return text;
}

// Adds the decisions of a plan file's text for classes not known yet (the first line of a key wins); returns how
// many lines were malformed. A last line without its newline is still being written: left for a later read.
int merge_plan_text(Plan& p, const std::string& text) {
  int malformed = 0;
  size_t start = 0;
  for (size_t end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
    const std::string line = text.substr(start, end - start);
    if (line.find_first_not_of(" \t\r") == std::string::npos || line[line.find_first_not_of(" \t")] == '#') continue;
    auto parsed = parse_line(line);
    if (!parsed) {
      ++malformed;
      continue;
    }
    p.decisions.emplace(std::move(*parsed));  // no-op when the key is known
  }
  return malformed;
}

// Times both backends on this call's operands (a and b read-only): into out itself when not accumulating (the
// chosen backend then overwrites it), else into a zeroed scratch the size of out. The minimum of kRepeats runs
// each, after one warm-up (oneDNN builds its primitive, MKL its buffers), rounded to 0.1 us as the file keeps it.
Decision measure(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const at::Tensor target = accumulate ? at::zeros_like(out) : out;
  auto micros = [&](Backend backend) {
    const auto start = std::chrono::steady_clock::now();
    run_gemm(backend, target, a, b, accumulate);
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  };
  micros(Backend::kOneDnn);
  micros(Backend::kAten);
  double onednn = std::numeric_limits<double>::infinity(), aten = onednn;
  for (int r = 0; r < kRepeats; ++r) {
    onednn = std::min(onednn, micros(Backend::kOneDnn));
    aten = std::min(aten, micros(Backend::kAten));
  }
  onednn = std::round(onednn * 10.0) / 10.0;
  aten = std::round(aten * 10.0) / 10.0;
  return {aten * kAtenMargin < onednn ? Backend::kAten : Backend::kOneDnn, onednn, aten, false};
}

// An open file descriptor, closed (and its flock released) however the scope is left.
struct OpenFile {
  int fd;
  ~OpenFile() {
    if (fd >= 0) ::close(fd);
  }
};

// The decision for a class this process has not seen (p.mutex held): another process's, if the file has one by
// now, else measured here and appended. The file stays locked from the re-read to the append.
Decision decide(Plan& p, const std::string& key, const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                bool accumulate) {
  OpenFile file{-1};
  if (!p.path.empty()) {
    std::error_code ignored;  // an unwritable directory shows as the open's failure below
    std::filesystem::create_directories(std::filesystem::path(p.path).parent_path(), ignored);
    file.fd = ::open(p.path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (file.fd >= 0 && ::flock(file.fd, LOCK_EX) != 0) {
      ::close(file.fd);
      file.fd = -1;
    }
    if (file.fd >= 0) {
      merge_plan_text(p, read_all(file.fd));
      const auto it = p.decisions.find(key);
      if (it != p.decisions.end()) return it->second;
    }
  }
  const Decision d = measure(out, a, b, accumulate);
  p.decisions.emplace(key, d);
  const std::string line = format_decision(key, d) + "\n";
  const bool written = file.fd >= 0 && ::write(file.fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  if (!written && !p.path.empty() && !p.warned_unwritable) {
    p.warned_unwritable = true;
    TORCH_WARN("conure: cannot write the CPU GEMM plan file ", p.path,
               ": this process keeps its GEMM choices in memory only (a later run may choose otherwise; set "
               "CONURE_GEMM_PLAN or CONURE_CACHE to a writable place)");
  }
  return d;
}

Backend cpu_backend(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const Mode m = mode();
  if (m == Mode::kAten || !onednn_runs(out.scalar_type())) return Backend::kAten;
  if (m == Mode::kOneDnn) return Backend::kOneDnn;
  const int64_t M = round_up_pow2(out.size(-2)), N = round_up_pow2(out.size(-1)), K = round_up_pow2(a.size(-1));
  if (2.0 * double(M) * double(N) * double(K) < kMinMeasuredFlops) return Backend::kOneDnn;
  const std::string key = class_key(out, a, b, M, N, K);
  Plan& p = plan();
  const std::lock_guard<std::mutex> lock(p.mutex);
  const auto it = p.decisions.find(key);
  return it != p.decisions.end() ? it->second.backend : decide(p, key, out, a, b, accumulate).backend;
}

}  // namespace

// out = (accumulate ? out : 0) + a @ b; 2-D, or 3-D batched (a's batch may be 1: broadcast).
//
// CPU float32/bfloat16 with a contiguous out: CONURE_CPU_GEMM=aten or =onednn forces a backend (onednn falls back to
// ATen where oneDNN cannot run). Unset or auto, oneDNN unless the plan measured ATen's GEMM over 10% faster for this
// shape class (MKL's sgemm took its AVX2 path on AMD and ran ~3x slower than oneDNN at the conv's shapes; on Intel
// it may take AVX-512/AMX); classes under 2^24 flops are not measured and take oneDNN. Anything else: ATen.
void gemm(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const auto dtype = out.scalar_type();
  if (!out.is_cpu() || (dtype != at::kFloat && dtype != at::kBFloat16) || !out.is_contiguous()) {
    run_gemm(Backend::kAten, out, a, b, accumulate);
    return;
  }
  run_gemm(cpu_backend(out, a, b, accumulate), out, a, b, accumulate);
}

std::string cpu_gemm_backend() {
  const Mode m = mode();
  if (m == Mode::kAten) return "aten (CONURE_CPU_GEMM=aten)";
  if (!onednn_runs(at::kFloat)) {
    return m == Mode::kOneDnn ? "aten (CONURE_CPU_GEMM=onednn, but oneDNN cannot run here)"
                              : "aten (oneDNN cannot run here)";
  }
  return m == Mode::kOneDnn ? "onednn (CONURE_CPU_GEMM=onednn)" : "auto (measured per shape class)";
}

std::string cpu_gemm_plan_file(const std::string& path) {
  Plan& p = plan();
  const std::lock_guard<std::mutex> lock(p.mutex);
  p.path = path;
  p.decisions.clear();
  p.warned_unwritable = false;
  if (path.empty()) return "";
  const OpenFile file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) {
    return errno == ENOENT || errno == ENOTDIR
               ? ""
               : "cannot read the CPU GEMM plan file " + path + " (" + std::strerror(errno) + ")";
  }
  ::flock(file.fd, LOCK_SH);  // no half-written line
  const int malformed = merge_plan_text(p, read_all(file.fd));
  if (malformed == 0) return "";
  return "skipped " + std::to_string(malformed) + " malformed line(s) of the CPU GEMM plan file " + path +
         " (those shape classes are measured again)";
}

std::vector<std::string> cpu_gemm_plan() {
  Plan& p = plan();
  const std::lock_guard<std::mutex> lock(p.mutex);
  std::vector<std::string> lines;
  for (const auto& [key, d] : p.decisions) {
    lines.push_back(format_decision(key, d) + (d.from_file ? " file" : " measured"));
  }
  return lines;
}

}  // namespace conure

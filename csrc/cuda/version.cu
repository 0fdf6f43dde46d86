// Build metadata of the CUDA part of clora3d._C (kept free of ATen headers: compiles in seconds).
//
// setup.py passes the target architectures as CLORA3D_CUDA_ARCH_TOKENS, a bare token list such as
// 8.0_8.6+PTX ('_' for ';' and no quotes, so it survives the shell that torch's ninja build runs
// the host compiler through, and nvcc, which splits option values at commas). It is stringified here and exported as
// the C string clora3d_cuda_archs ("8.0;8.6+PTX"), which is what the CLORA3D_CUDA_ARCHS macro names.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#ifndef CLORA3D_CUDA_ARCH_TOKENS
#define CLORA3D_CUDA_ARCH_TOKENS unknown
#endif
#define CLORA3D_STRINGIFY_IMPL(...) #__VA_ARGS__
#define CLORA3D_STRINGIFY(...) CLORA3D_STRINGIFY_IMPL(__VA_ARGS__)

namespace {

constexpr char kArchTokens[] = CLORA3D_STRINGIFY(CLORA3D_CUDA_ARCH_TOKENS);

// The token list with '_' turned back into ';' (TORCH_CUDA_ARCH_LIST syntax), built at compile time.
struct ArchString {
  char s[sizeof(kArchTokens)];
  constexpr ArchString() : s{} {
    for (std::size_t i = 0; i < sizeof(kArchTokens); ++i) s[i] = kArchTokens[i] == '_' ? ';' : kArchTokens[i];
  }
};
constexpr ArchString kArchs{};

}  // namespace

extern "C" const char* const clora3d_cuda_archs = kArchs.s;

namespace clora3d {

int64_t cuda_compiled_version() { return static_cast<int64_t>(CUDART_VERSION); }

std::string cuda_build_archs() { return std::string(clora3d_cuda_archs); }

}  // namespace clora3d
